"""Fault injection on real runs of the tiny model: each test breaks a run directory, its data or its input
the way a crash, a full disk, a careless edit or a hostile file would, and checks what tuna does."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_jsonl
from tuna.cli import main
from tuna.rundir import read_metrics

ROWS = [{"messages": [{"role": "user", "content": f"what is {i} + {i}?"}, {"role": "assistant", "content": f"{2 * i}"}]}
        for i in range(40)]


def write_config(directory: Path, model_dir: Path, data: Path, **train) -> Path:
    raw = {"model": str(model_dir), "method": "full", "data": {"path": str(data), "eval_split": 0.2},
           "train": {"max_steps": 4, "micro_batch_size": 4, "lr": 1e-2, "device": "cpu", "precision": "fp32",
                     "save_every": 2, "seed": 0, "schedule": "constant", "warmup_ratio": 0.0, **train},
           "eval": {"every": 0}, "output_dir": str(directory / "run")}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def tuna(*args: str) -> int:
    return main([*args, "--no-progress"] if args[0] == "train" else list(args))


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run / "metrics.jsonl")}


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_model_dir) -> dict:
    """One run of 6 steps (the reference losses) and one of 4 steps with checkpoints at 2 and 4, made once per
    module; tests work on copies. The learning rate is constant, so the 4-step run's steps are the 6-step run's."""
    root = tmp_path_factory.mktemp("template")
    data = write_jsonl(root / "data.jsonl", ROWS)
    whole = root / "whole"
    whole.mkdir()
    assert tuna("train", str(write_config(whole, tiny_model_dir, data, max_steps=6))) == 0
    stopped = root / "stopped"
    stopped.mkdir()
    assert tuna("train", str(write_config(stopped, tiny_model_dir, data, max_steps=4))) == 0
    return {"data": data, "losses": losses(whole / "run"), "stopped": stopped / "run", "model": tiny_model_dir}


@pytest.fixture
def stopped_run(template, tmp_path) -> Path:
    """A copy of a run whose checkpoints are at steps 2 and 4; `--set train.max_steps=6` continues it."""
    run = tmp_path / "run"
    shutil.copytree(template["stopped"], run)
    return run


def resume(run: Path, *extra: str) -> int:
    return tuna("train", "--resume", str(run), "--set", "train.max_steps=6", *extra)
