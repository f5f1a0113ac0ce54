"""optim.eight_bit: bitsandbytes' AdamW8bit, run for real on the CPU."""
import importlib.util
import json

import pytest
import torch

from tuna.errors import UserError
from tuna.methods import REGISTRY
from tuna.models.load import load_base
from tuna.train.loop import train
from tuna.train.optim import build_optimizer

SMALLEST_QUANTISED = 4096  # bitsandbytes keeps float32 states for tensors with fewer elements


def one_step(tiny_recipe, directory, eight_bit: bool):
    torch.manual_seed(0)
    recipe = tiny_recipe(model=str(directory), method="full", optim={"eight_bit": eight_bit})
    method = REGISTRY["full"].from_recipe(recipe)
    model = method.prepare(load_base(str(directory))[0])
    optimizer = build_optimizer(model, recipe, method, 1e-3)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return model, optimizer


def state_bytes(optimizer, model) -> int:
    """Bytes of optimizer state held for the model's large tensors."""
    return sum(t.numel() * t.element_size() for p in model.parameters() if p.numel() >= SMALLEST_QUANTISED
               for t in optimizer.state[p].values() if torch.is_tensor(t) and t.dim() > 0)


def test_large_tensors_keep_both_moments_in_one_byte_per_element(tiny_recipe, tiny_model_dir):
    model, optimizer = one_step(tiny_recipe, tiny_model_dir, eight_bit=True)
    large = [p for p in model.parameters() if p.numel() >= SMALLEST_QUANTISED]
    assert large
    for p in large:
        state = optimizer.state[p]
        assert state["state1"].dtype == state["state2"].dtype == torch.uint8
        assert state["state1"].shape == state["state2"].shape == p.shape
    plain_model, plain = one_step(tiny_recipe, tiny_model_dir, eight_bit=False)
    assert state_bytes(optimizer, model) < 0.3 * state_bytes(plain, plain_model)  # 2 bytes (+ block scales) instead of 8


def test_training_follows_float32_adamw_closely(tiny_recipe, tmp_path):
    runs = {}
    for eight_bit in (False, True):
        result = train(tiny_recipe(method="full", optim={"eight_bit": eight_bit}, train={"max_steps": 6, "lr": 5e-3},
                                   eval={"every": 0}, output_dir=str(tmp_path / str(eight_bit))), progress=False)
        runs[eight_bit] = [json.loads(line)["train/loss"] for line in open(f"{result.run_dir}/metrics.jsonl")]
    assert runs[True] != runs[False]  # the states really are quantised
    assert runs[True] == pytest.approx(runs[False], rel=0.05)
    assert runs[True][-1] < runs[True][0]


@pytest.mark.parametrize("optim, train_knobs, message", [
    ({"eight_bit": True, "offload": True}, {}, "two different optimizers"),
    ({"eight_bit": True}, {"distributed": "fsdp"}, "optim.eight_bit works with one process"),
])
def test_combinations_that_cannot_work_are_refused(tiny_recipe, optim, train_knobs, message):
    with pytest.raises(UserError, match=message):
        tiny_recipe(optim=optim, train=train_knobs)


def test_a_missing_bitsandbytes_is_an_error_before_any_work(tiny_recipe, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(UserError, match="optim.eight_bit needs bitsandbytes, not installed here"):
        train(tiny_recipe(optim={"eight_bit": True}), progress=False)
    assert not (tmp_path / "run").exists()


def tensors_in(tree) -> list[torch.Tensor]:
    """Every tensor in a nest of dicts (bitsandbytes wraps its quantisation state in one more level)."""
    if torch.is_tensor(tree):
        return [tree]
    return [t for value in tree.values() for t in tensors_in(value)] if isinstance(tree, dict) else []


@pytest.mark.parametrize("first, then", [(False, True), (True, False)])
def test_switching_eight_bit_on_resume_starts_the_moments_afresh(tiny_recipe, capsys, first, then):
    """The out-of-memory advice says: change the knobs, then resume. The old optimizer state cannot
    feed the other optimizer, so it is left out (and said so); everything else is restored."""
    options = dict(method="full", eval={"every": 0})
    train(tiny_recipe(optim={"eight_bit": first}, train={"max_steps": 2, "save_every": 2}, **options), progress=False)
    resumed = train(tiny_recipe(optim={"eight_bit": then}, train={"max_steps": 4, "save_every": 2}, **options),
                    resume=True, progress=False)
    assert resumed.steps == 4
    assert "moments start afresh" in capsys.readouterr().err
    state = torch.load(f"{resumed.run_dir}/checkpoints/step-0000004/state.pt", weights_only=False)
    moments = {t.dtype for t in tensors_in(state["optimizer"]["state"])}
    assert state["optimizer_kind"] == ("adamw8bit" if then else "adamw")
    assert (torch.uint8 in moments) == then
