"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) fed the records metrics.jsonl gets.

metrics.jsonl stays the source of truth: the loop writes a record there first, then hands the same
record to each tracker, keyed by its step. A tracker is only imported when asked for; asking for one
whose package is not installed is an error before any work starts.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from tuna import rundir
from tuna.errors import UserError, require_packages

# name in train.report_to: (module imported, pip package that provides it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
TENSORBOARD_DIR = "tensorboard"  # inside the run directory


def check_installed(names: list[str]) -> None:
    require_packages("train.report_to asks for", {name: PACKAGES[name] for name in names}, "it from train.report_to")


class Trackers:
    """The trackers of one run: each gets the config at start, every record, and is closed at the end."""

    def __init__(self, names: list[str], recipe, run_dir: Path):
        check_installed(names)
        config = yaml.safe_load(recipe.to_yaml())  # the resolved config, as config.yaml holds it
        self.trackers = [OPEN[name](config, Path(run_dir)) for name in dict.fromkeys(names)]

    def log(self, record: dict) -> None:
        scalars = {key: float(value) for key, value in record.items() if key != "step" and _is_scalar(value)}
        for tracker in self.trackers:
            tracker.log(record["step"], scalars)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


class TensorBoard:
    def __init__(self, config: dict, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()))  # a Markdown code block

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a crash loses nothing already in metrics.jsonl

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """Logs where MLFLOW_TRACKING_URI (default ./mlruns) and MLFLOW_EXPERIMENT_NAME point."""

    def __init__(self, config: dict, run_dir: Path):
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params(_flatten(config))
        mlflow.log_artifact(str(run_dir / rundir.CONFIG))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class Wandb:
    """Online or offline as the user's WANDB_MODE says: tuna never chooses the network for them."""

    def __init__(self, config: dict, run_dir: Path):
        import wandb

        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tuna"), name=run_dir.name,
                                  dir=str(run_dir), config=config)
        except wandb.errors.Error as e:
            raise UserError(f"wandb could not start ({e}); log in with `wandb login`, or set WANDB_MODE=offline "
                            f"to log locally and `wandb sync` later") from None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


OPEN = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb}


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """{"train.lr": "0.0002", ...}: MLflow parameters are flat strings."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
