import importlib.util
from pathlib import Path

import pytest

from tuna.errors import UserError
from tuna.train.loop import train
from tuna.rundir import read_metrics


def test_tensorboard_receives_every_logged_scalar_and_the_config(tiny_recipe):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny_recipe(train={"max_steps": 4, "report_to": ["tensorboard"]}, eval={"every": 2}), progress=False)
    events = EventAccumulator(f"{result.run_dir}/tensorboard", size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    records = read_metrics(f"{result.run_dir}/metrics.jsonl")
    logged = {key for record in records for key in record} - {"step"}
    assert set(events.Tags()["scalars"]) == logged
    for key in ("train/loss", "eval/loss", "train/lr"):
        scalars = events.Scalars(key)
        assert [e.step for e in scalars] == [r["step"] for r in records if key in r]
        assert [e.value for e in scalars] == pytest.approx([r[key] for r in records if key in r], rel=1e-6)  # float32
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "report_to:" in config and "- tensorboard" in config


def test_a_tracker_that_is_not_installed_is_an_error_before_any_work(tiny_recipe, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    recipe = tiny_recipe(train={"report_to": ["tensorboard", "wandb"]})
    with pytest.raises(UserError, match=r"report_to asks for wandb, not installed here; .*`pip install wandb`"):
        train(recipe, progress=False)
    assert not Path(recipe.output_dir).exists()
