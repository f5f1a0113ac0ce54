"""Preference objectives through the training loop: logging, learning, accumulation and exact resume."""
import dataclasses

import pytest

from tuna.objectives import REGISTRY as OBJECTIVES
from tuna.train.loop import train
from tuna.rundir import read_metrics
from tests.conftest import write_jsonl

REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@pytest.fixture
def preference_data(tmp_path):
    rows = [{"prompt": f"what is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"} for i in range(24)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def metrics(run_dir) -> list[dict]:
    return read_metrics(f"{run_dir}/metrics.jsonl")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_logs_rewards_and_learns_to_prefer_the_chosen_answers(tiny_recipe, preference_data, method):
    """Evaluated on the training pairs themselves: at step 0 the policy is the reference, so every margin is 0."""
    recipe = tiny_recipe(method=method, objective="dpo",
                         data={"path": str(preference_data), "eval_split": str(preference_data)},
                         train={"max_steps": 10, "lr": 1e-2, "save_every": 0}, eval={"every": 5})
    rows = metrics(train(recipe, progress=False).run_dir)
    assert all(set(REWARDS) <= set(row) for row in rows) and not any(k.startswith("train/rewards") for k in rows[0])
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    evals = [row for row in rows if "eval/loss" in row]
    assert [row["step"] for row in evals] == [5, 10]
    assert 0 < evals[0]["eval/rewards/margins"] < evals[1]["eval/rewards/margins"]
    assert evals[1]["eval/rewards/accuracies"] > 0.5 and evals[1]["eval/loss"] < evals[0]["eval/loss"]


@pytest.mark.parametrize("objective, knobs", [
    ("dpo", {"dpo": {"loss": "ipo"}}), ("dpo", {"dpo": {"loss": "hinge"}}), ("simpo", {}),
    ("orpo", {"method": "full", "orpo": {"beta": 1.0}}),  # at beta 0.1 its NLL term swamps a tiny LoRA's preference
], ids=["ipo", "hinge", "simpo", "orpo"])
def test_every_preference_loss_widens_the_margin_on_the_training_pairs(tiny_recipe, preference_data, objective, knobs):
    recipe = tiny_recipe(objective=objective, **knobs, data={"path": str(preference_data), "eval_split": str(preference_data)},
                         train={"max_steps": 10, "lr": 1e-2, "save_every": 0}, eval={"every": 5})
    evals = [row for row in metrics(train(recipe, progress=False).run_dir) if "eval/loss" in row]
    assert evals[0]["eval/rewards/margins"] < evals[1]["eval/rewards/margins"]
    assert evals[1]["eval/rewards/accuracies"] > 0.5


def test_accumulation_matches_one_big_batch_of_pairs(tiny_recipe, preference_data, tmp_path):
    def run(name, size, accum):
        recipe = tiny_recipe(objective="dpo", lora={"dropout": 0.0}, data={"path": str(preference_data)},
                             train={"micro_batch_size": size, "grad_accum": accum, "max_steps": 4},
                             output_dir=str(tmp_path / name))
        return metrics(train(recipe, progress=False).run_dir)

    big, accumulated = run("big", 4, 1), run("accum", 2, 2)
    for a, b in zip(big, accumulated):
        for key in ("train/loss", *REWARDS):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
    assert len({row["train/loss"] for row in big}) > 1


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resume_after_a_crash_reproduces_the_uninterrupted_dpo_run(tiny_recipe, preference_data, tmp_path,
                                                                    monkeypatch, method):
    options = dict(method=method, objective="dpo", data={"path": str(preference_data)}, eval={"every": 0},
                   train={"max_steps": 8, "save_every": 2, "lr": 5e-3})
    whole = metrics(train(tiny_recipe(**options, output_dir=str(tmp_path / "whole")), progress=False).run_dir)

    real, calls = OBJECTIVES["dpo"], {"n": 0}

    def crash_at_step_6(model, batch, step_weight, ctx):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("simulated crash")
        return real.loss(model, batch, step_weight, ctx)

    monkeypatch.setitem(OBJECTIVES, "dpo", dataclasses.replace(real, loss=crash_at_step_6))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_recipe(**options, output_dir=str(tmp_path / "crashed")), progress=False)
    monkeypatch.undo()
    resumed = train(tiny_recipe(**options, output_dir=str(tmp_path / "crashed")), resume=True, progress=False)
    assert resumed.steps == 8
    got = metrics(tmp_path / "crashed")
    assert [row["step"] for row in got] == list(range(1, 9))
    for a, b in zip(whole, got):
        for key in ("train/loss", *REWARDS):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
