"""The divergence message without a checkpoint, and a run whose gradient vanished, say what is true."""
from __future__ import annotations

import dataclasses

from tests.reliability.conftest import tuna, write_config
from tuna.objectives import REGISTRY


def test_divergence_before_any_checkpoint_does_not_suggest_resume(tmp_path, template, monkeypatch, capsys):
    real = REGISTRY["sft"]
    monkeypatch.setitem(REGISTRY, "sft", dataclasses.replace(real, loss=lambda *a: (real.loss(*a)[0] * float("nan"), {})))
    assert tuna("train", str(write_config(tmp_path, template["model"], template["data"]))) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no checkpoint had been written yet" in last and "--resume" not in last and "start the run again" in last


def test_a_vanished_gradient_is_warned_about(tmp_path, template, monkeypatch, capsys):
    real = REGISTRY["sft"]

    def flat(model, batch, step_weight, ctx):
        value, stats = real.loss(model, batch, step_weight, ctx)
        return value * 0.0, stats  # a loss that no longer depends on the weights: gradient norm 0

    monkeypatch.setitem(REGISTRY, "sft", dataclasses.replace(real, loss=flat))
    assert tuna("train", str(write_config(tmp_path, template["model"], template["data"]))) == 0
    err = capsys.readouterr().err
    assert err.count("the gradient norm has been 0 for 3 steps") == 1
