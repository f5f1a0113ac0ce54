"""Adding a method or an objective is one module and a registry line: here both live in this file.

A throwaway method (only the final norm trains, and it counts its step hooks in its own state) and a
throwaway objective (the token losses raised to a power, a knob of its own) are registered, configured
in YAML like any built-in, trained through `tuna train`, resumed, and listed by `tuna methods`.
No file under src/ knows them.
"""
from __future__ import annotations


import pytest
import torch
import yaml
from pydantic import Field
from safetensors.torch import load_file

from tuna.cli import main
from tuna.data.kinds import SEQUENCES
from tuna.methods import REGISTRY as METHODS
from tuna.methods.base import Method
from tuna.objectives import REGISTRY as OBJECTIVES
from tuna.objectives.base import Objective
from tuna.rundir import read_metrics
from tuna.sections import Section


class NormOnlyKnobs(Section):
    lr_multiplier: float = Field(1.0, gt=0)


class NormOnly(Method):
    name = "norm_only"
    summary = "train only the final norm"
    paper = "-"
    default_lr = 1e-2
    sections = {"norm_only": NormOnlyKnobs}

    def __init__(self, **knobs):
        super().__init__(**knobs)
        self.hooks = 0  # the method's own state, checkpointed through extra_state

    def prepare(self, model, calibration=None):
        model.requires_grad_(False)
        model.get_decoder().norm.weight.requires_grad_(True)
        return model

    def on_step_start(self, model, step, max_steps):
        self.hooks += 1
        return False

    def lr_scales(self, model):
        return {name: self.norm_only.lr_multiplier for name, p in model.named_parameters() if p.requires_grad}

    def extra_state(self, model):
        return {"hooks": self.hooks}

    def load_extra_state(self, model, state):
        self.hooks = state["hooks"]


class PoweredKnobs(Section):
    power: float = Field(2.0, gt=0)


def powered_loss(model, batch, step_weight, ctx):
    losses, mask = ctx.token_losses(model, batch)
    value = (losses ** ctx.knobs.power * batch["weights"][:, 1:]).sum() / step_weight
    share = float(batch["weights"].sum()) / step_weight  # this micro-batch's part of the step, as the loss
    return value, {"power": ctx.knobs.power * share}


POWERED = Objective(name="powered_nll", summary="token losses raised to a power", paper="-", kind=SEQUENCES,
                    loss=powered_loss, knobs=PoweredKnobs)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, NormOnly.name, NormOnly)
    monkeypatch.setitem(OBJECTIVES, POWERED.name, POWERED)


def write_config(tmp_path, tiny_model_dir, chat_data, **extra) -> str:
    raw = {"model": str(tiny_model_dir), "data": {"path": str(chat_data), "eval_split": 0.2},
           "method": "norm_only", "norm_only": {"lr_multiplier": 0.5},
           "objective": "powered_nll", "powered_nll": {"power": 3.0},
           "train": {"max_steps": 2, "micro_batch_size": 4, "device": "cpu", "precision": "fp32", "save_every": 1},
           "eval": {"every": 1}, "output_dir": str(tmp_path / "run"), **extra}
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_method_and_an_objective_defined_outside_src_train_through_tuna_train(registered, tiny_model_dir, chat_data,
                                                                                tmp_path):
    assert main(["train", write_config(tmp_path, tiny_model_dir, chat_data), "--no-progress"]) == 0
    run = tmp_path / "run"
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["train/power"] == pytest.approx(3.0) for r in records)  # the objective read its own knob
    assert all("eval/loss" in r for r in records)  # the sequences kind evaluated the held-out split
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["norm_only"] == {"lr_multiplier": 0.5} and resolved["powered_nll"] == {"power": 3.0}

    from tuna.models.load import load_base

    base = load_base(str(tiny_model_dir))[0].state_dict()
    tuned = load_file(run / "final" / "model.safetensors")
    changed = {name for name, tensor in tuned.items() if not torch.equal(tensor, base[name])}
    assert changed == {"model.norm.weight"}  # the method's prepare decided what trained

    state = torch.load(sorted((run / "checkpoints").iterdir())[-1] / "state.pt", weights_only=False)
    assert state["method"] == {"hooks": 3}  # setup's call, then one before each of the 2 steps
    assert [g["lr_scale"] for g in state["optimizer"]["param_groups"]] == [0.5]  # the method's lr_scales


def test_the_plugins_resume_and_their_knobs_are_checked_like_built_ins(registered, tiny_model_dir, chat_data,
                                                                       tmp_path, capsys):
    config = write_config(tmp_path, tiny_model_dir, chat_data)
    assert main(["train", config, "--no-progress", "--set", "train.max_steps=1"]) == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress", "--set", "train.max_steps=2"]) == 0
    state = torch.load(sorted((tmp_path / "run" / "checkpoints").iterdir())[-1] / "state.pt", weights_only=False)
    assert state["step"] == 2 and state["method"] == {"hooks": 4}  # 2 before the stop, restored, then 2 more
    capsys.readouterr()
    assert main(["train", config, "--set", "powered_nll.power=-1"]) == 2
    assert "powered_nll.power" in capsys.readouterr().err
    assert main(["train", config, "--set", "method=full"]) == 2
    assert "`norm_only.*` knobs are set but method is `full`" in capsys.readouterr().err
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert "norm_only" in listing and "norm_only.lr_multiplier" in listing and "powered_nll.power" in listing
