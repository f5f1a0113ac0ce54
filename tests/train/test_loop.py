import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tuna.errors import UserError
from tuna.objectives import REGISTRY as OBJECTIVES
from tuna.train import checkpoint
from tuna.train.loop import train
from tuna.rundir import read_metrics


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


def failing_objective(monkeypatch, at_call: int, failure, name: str = "sft"):
    """Make an objective (SFT by default) misbehave on its `at_call`-th call (a crash, or a NaN loss)."""
    real, calls = OBJECTIVES[name], {"n": 0}

    def loss(model, batch, total, ctx):
        calls["n"] += 1
        value, stats = real.loss(model, batch, total, ctx)
        if calls["n"] == at_call:
            if failure == "crash":
                raise RuntimeError("simulated crash")
            value = value * float("nan")
        return value, stats

    monkeypatch.setitem(OBJECTIVES, name, dataclasses.replace(real, loss=loss))


KNOBS = {"train": {"neftune_alpha": 5.0}, "data": {"mask_thought_ratio": 0.2},
         "optim": {"layer_decay": 0.8, "clip_per_component": True}}


@pytest.mark.parametrize("method, extra", [
    ("lora", {}), ("full", {}), ("hft", {}), ("sparse", {"sparse": {"density": 0.05, "calibration_batches": 2}}),
    ("sparse", {"sparse": {"density": 0.05, "calibration_batches": 2, "regrow_every": 3}}),
    ("s2ft", {"s2ft": {"heads_per_layer": 1, "ffn_channels": 8}}), ("chain_lora", {"chain_lora": {"rounds": 4}}),
    ("lora", KNOBS),  # noise, masking, per-group rates and per-component clipping all resume exactly
    ("dora", {"lora": {"r": 4}}), ("lora", {"lora": {"r": 4, "init": "pissa"}}),
    ("lora", {"data": {"batching": "packed", "max_tokens": 64}, "train": {"loss_weighting": "sequence"}}),
    ("full", {"data": {"batching": "sorted"}}),
    ("longlora", {"lora": {"r": 4}, "longlora": {"group_size_ratio": 0.25}}),
    ("full", {"optim": {"offload": True}}), ("chain_lora", {"chain_lora": {"rounds": 4}, "optim": {"offload": True}}),
    ("full", {"optim": {"eight_bit": True}}),
    ("lora", {"lora": {"r": 4, "freeze_a": True}}), ("ia3", {}), ("prompt_tuning", {"prompt_tuning": {"virtual_tokens": 4}}),
    ("lora", {"objective": "otr", "otr": {"samples": 4}}),
    ("lora", {"objective": "rft", "rft": {"samples": 2, "max_new_tokens": 4}}),
    ("lora", {"data": {"drop_question": True}}), ("prefix", {"prefix": {"virtual_tokens": 3}}),
], ids=["lora", "full", "hft", "sparse", "sparse+regrow", "s2ft", "chain_lora", "lora+knobs", "dora", "pissa", "packed+sequence",
        "sorted", "longlora", "full+offload", "chain_lora+offload", "full+8bit",
        "lora_fa", "ia3", "prompt_tuning", "otr", "rft", "qfft", "prefix"])
def test_resume_after_a_crash_reproduces_the_uninterrupted_losses(tiny_recipe, tmp_path, monkeypatch, method, extra):
    train_options = {"max_steps": 8, "save_every": 2, "lr": 5e-3, **extra.get("train", {})}
    options = dict(method=method, **{**extra, "train": train_options})
    whole = train(tiny_recipe(**options, output_dir=str(tmp_path / "whole")), progress=False)
    assert whole.steps == 8

    # dies during step 6; step 4 is the last checkpoint
    failing_objective(monkeypatch, at_call=6, failure="crash", name=extra.get("objective", "sft"))
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_recipe(**options, output_dir=str(crashed)), progress=False)
    assert [p.name for p in checkpoint.checkpoints(crashed / "checkpoints")] == ["step-0000002", "step-0000004"]
    monkeypatch.undo()

    resumed = train(tiny_recipe(**options, output_dir=str(crashed)), resume=True, progress=False)
    assert resumed.steps == 8
    expected, got = losses(tmp_path / "whole"), losses(crashed)
    assert sorted(got) == list(range(1, 9))  # metrics.jsonl keeps one line per step, none duplicated
    for step in range(1, 9):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    assert len(set(expected.values())) > 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    failing_objective(monkeypatch, at_call=5, failure="nan")
    recipe = tiny_recipe(train={"max_steps": 8, "save_every": 2})
    with pytest.raises(UserError, match=r"loss became nan at step 5.*last good checkpoint is .*step-0000004"):
        train(recipe, progress=False)
    run = tmp_path / "run"
    assert not (run / "final").exists()
    assert [p.name for p in checkpoint.checkpoints(run / "checkpoints")] == ["step-0000002", "step-0000004"]
    monkeypatch.undo()
    assert train(tiny_recipe(train={"max_steps": 8, "save_every": 2}), resume=True, progress=False).steps == 8


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tiny_recipe, tmp_path, monkeypatch):
    real_save, calls = torch.save, {"n": 0}

    def flaky_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        train(tiny_recipe(train={"max_steps": 6, "save_every": 2}), progress=False)
    directory = tmp_path / "run" / "checkpoints"
    assert [p.name for p in directory.iterdir()] == ["step-0000002"]  # no partial step-4, no temporary left behind
    assert json.loads((directory / "step-0000002" / "meta.json").read_text())["step"] == 2


def test_gradient_accumulation_matches_one_big_batch(tiny_recipe, tmp_path):
    big = train(tiny_recipe(lora={"dropout": 0.0}, train={"micro_batch_size": 4, "grad_accum": 1, "max_steps": 4},
                            output_dir=str(tmp_path / "big")), progress=False)
    accum = train(tiny_recipe(lora={"dropout": 0.0}, train={"micro_batch_size": 2, "grad_accum": 2, "max_steps": 4},
                              output_dir=str(tmp_path / "accum")), progress=False)
    a, b = losses(tmp_path / "big"), losses(tmp_path / "accum")
    for step in range(1, 5):
        assert a[step] == pytest.approx(b[step], abs=1e-5)


def test_run_directory_layout_and_metrics(tiny_recipe, tmp_path):
    result = train(tiny_recipe(train={"max_steps": 6}, eval={"every": 3}), progress=False)
    run = tmp_path / "run"
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "final", "summary.json"} <= {p.name for p in run.iterdir()}
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(records[0])
    assert [r["step"] for r in records if "eval/loss" in r] == [3, 6]
    assert result.eval_loss == records[-1]["eval/loss"]
    assert records[0]["train/lr"] > records[-1]["train/lr"]  # cosine decays


def test_an_existing_run_is_not_overwritten(tiny_recipe):
    train(tiny_recipe(train={"max_steps": 2}), progress=False)
    with pytest.raises(UserError, match="already holds a run; resume it with --resume"):
        train(tiny_recipe(train={"max_steps": 2}), progress=False)


def test_a_checkpoint_from_a_different_model_is_refused(tiny_recipe, tiny_dirs):
    train(tiny_recipe(train={"max_steps": 4, "save_every": 2}), progress=False)
    other = tiny_recipe(model=str(tiny_dirs["qwen2"]), train={"max_steps": 8, "save_every": 2})
    with pytest.raises(UserError, match="was made for a different model or method .*model_type: checkpoint llama vs model qwen2"):
        train(other, resume=True, progress=False)


def test_cuda_asked_for_but_absent_and_fp16_on_cpu(tiny_recipe):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="no CUDA device is available"):
        train(tiny_recipe(train={"device": "cuda"}), progress=False)
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        train(tiny_recipe(train={"precision": "fp16"}), progress=False)


def test_gradient_checkpointing_is_enabled_and_changes_no_loss(tiny_recipe, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    enabled, real_enable = [], PreTrainedModel.activation_checkpointing_enable

    def spy(model, *args, **kwargs):
        enabled.append(type(model).__name__)
        return real_enable(model, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "activation_checkpointing_enable", spy)
    for name, on in (("plain", False), ("ckpt", True)):
        recipe = tiny_recipe(lora={"dropout": 0.0}, train={"max_steps": 3, "gradient_checkpointing": on},
                             output_dir=str(tmp_path / name))
        train(recipe, progress=False)
        assert bool(enabled) == on
    plain, ckpt = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert all(plain[s] == pytest.approx(ckpt[s], abs=1e-5) for s in (1, 2, 3))


def test_out_of_memory_names_the_knobs_that_reduce_memory_and_the_checkpoint(tiny_recipe, monkeypatch):
    from tuna.train import loop

    sft = loop.OBJECTIVES["sft"]
    calls = []

    def runs_out_at_step_3(model, batch, step_weight, ctx):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return sft.loss(model, batch, step_weight, ctx)

    monkeypatch.setitem(loop.OBJECTIVES, "sft", dataclasses.replace(sft, loss=runs_out_at_step_3))
    recipe = tiny_recipe(train={"max_steps": 4, "save_every": 2})
    with pytest.raises(UserError) as caught:
        loop.train(recipe, progress=False)
    message = str(caught.value)
    assert "out of memory at step 3" in message and "Traceback" not in message
    for knob in ("train.micro_batch_size", "train.gradient_checkpointing", "train.loss_chunk_tokens", "data.max_tokens"):
        assert knob in message
    last = checkpoint.checkpoints(Path(recipe.output_dir) / "checkpoints")[-1]
    assert last.name == "step-0000002" and f"the last good checkpoint is {last}" in message
