import pytest
import torch

from tuna.data.render import IGNORE
from tuna.errors import UserError
from tuna.models.load import load_base
from tuna.objectives.chunked_ce import chunked_token_losses
from tuna.models.forward import token_losses


def a_batch(vocab: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (3, 19), generator=generator)
    labels = input_ids.clone()
    labels[0, :6] = IGNORE  # a prompt
    labels[2, 11:] = IGNORE  # padding
    attention = torch.ones_like(input_ids)
    attention[2, 11:] = 0
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def losses_and_grads(model, batch, compute):
    model.zero_grad()
    losses, mask = compute(model, batch)
    (losses * torch.linspace(0.5, 2.0, losses.shape[1])).sum().backward()  # uneven weights, as sequence weighting
    return losses.detach(), mask, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])  # tied and untied output heads
def test_chunked_loss_and_gradients_equal_the_plain_loss(tiny_dirs, kind):
    model, tokenizer = load_base(str(tiny_dirs[kind]))
    batch = a_batch(len(tokenizer))
    plain, plain_mask, plain_grads = losses_and_grads(model, batch, token_losses)
    chunked, mask, grads = losses_and_grads(model, batch, lambda m, b: chunked_token_losses(m, b, chunk_tokens=7))
    assert torch.equal(mask, plain_mask) and (plain[~plain_mask] == 0).all()
    torch.testing.assert_close(chunked, plain, atol=1e-6, rtol=1e-5)
    assert grads.keys() == plain_grads.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_training_with_a_chunked_loss_takes_the_same_steps(tiny_recipe, tmp_path):
    import json

    from tuna.train.loop import train

    runs = {}
    for name, chunk in (("plain", None), ("chunked", 5)):
        result = train(tiny_recipe(train={"max_steps": 3, "loss_chunk_tokens": chunk}, eval={"every": 0},
                                   output_dir=str(tmp_path / name)), progress=False)
        runs[name] = [json.loads(line)["train/loss"] for line in open(f"{result.run_dir}/metrics.jsonl")]
    assert runs["chunked"] == pytest.approx(runs["plain"], abs=1e-5)


def test_models_whose_logits_are_transformed_are_refused(tiny_dirs):
    model, tokenizer = load_base(str(tiny_dirs["llama"]))
    model.config.logit_scale = 0.5
    with pytest.raises(UserError, match="transforms its logits"):
        chunked_token_losses(model, a_batch(len(tokenizer)), chunk_tokens=4)


def test_no_more_than_a_slice_of_logits_exists_at_once(tiny_dirs, monkeypatch):
    """The head sees at most chunk_tokens positions per call, and each slice is recomputed in the backward
    pass instead of being kept: twice as many calls as slices."""
    from tuna.objectives import chunked_ce

    model, tokenizer = load_base(str(tiny_dirs["qwen2"]))
    rows, real = [], chunked_ce._slice_losses
    monkeypatch.setattr(chunked_ce, "_slice_losses", lambda h, *rest: rows.append(h.shape[0]) or real(h, *rest))
    losses, _ = chunked_token_losses(model, a_batch(len(tokenizer)), chunk_tokens=8)
    slices = -(-3 * 18 // 8)
    assert len(rows) == slices and max(rows) <= 8
    losses.sum().backward()
    assert len(rows) == 2 * slices


def fake_liger(calls: list):
    """Stands in for liger's `liger_fused_linear_cross_entropy` (Triton needs CUDA): its documented
    semantics, input (N, H) and weight (V, H), computed plainly, with every call recorded."""
    def fused(_input, weight, target, bias=None, ignore_index=-100, reduction="mean"):
        calls.append({"ignore_index": ignore_index, "reduction": reduction, "rows": _input.shape[0]})
        logits = torch.nn.functional.linear(_input, weight, bias).float()
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
    return fused


def test_on_cuda_liger_replaces_the_slices_with_the_same_losses_and_gradients(tiny_dirs, monkeypatch):
    from tuna.objectives import chunked_ce

    calls = []
    monkeypatch.setattr(chunked_ce, "fused_kernel", lambda device: fake_liger(calls))
    model, tokenizer = load_base(str(tiny_dirs["qwen2"]))
    batch = a_batch(len(tokenizer))
    plain, plain_mask, plain_grads = losses_and_grads(model, batch, token_losses)
    fused, mask, grads = losses_and_grads(model, batch, lambda m, b: chunked_token_losses(m, b, chunk_tokens=7))
    assert calls == [{"ignore_index": IGNORE, "reduction": "none", "rows": 3 * 18}]  # one call, every position
    assert torch.equal(mask, plain_mask)
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-5)
    for name in plain_grads:
        torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_liger_is_chosen_only_on_cuda_and_when_installed(monkeypatch):
    import importlib.util
    import sys
    import types

    from tuna.objectives import chunked_ce

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a))
    assert chunked_ce.fused_kernel(torch.device("cuda")) is None  # not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a))
    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = fake_liger([])
    for name, module in (("liger_kernel", types.ModuleType("liger_kernel")),
                         ("liger_kernel.transformers", types.ModuleType("liger_kernel.transformers")),
                         ("liger_kernel.transformers.functional", functional)):
        monkeypatch.setitem(sys.modules, name, module)
    assert chunked_ce.fused_kernel(torch.device("cpu")) is None  # installed, but Triton's kernels need CUDA
    assert chunked_ce.fused_kernel(torch.device("cuda")) is functional.liger_fused_linear_cross_entropy


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    assert not any(p.requires_grad for p in model.get_output_embeddings().parameters())
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2"])  # tied and untied output heads
def test_the_frozen_head_loss_and_gradients_equal_the_plain_loss(tiny_dirs, kind):
    """The default under LoRA: the same per-token losses, and the same adapter gradients through an uneven,
    nonlinear use of them (as anchored_sft and dft make), with no logits kept for the backward pass."""
    from tuna.objectives.chunked_ce import frozen_head_token_losses

    model, tokenizer = load_base(str(tiny_dirs[kind]))
    model, batch = with_lora(model), a_batch(len(tokenizer))

    def nonlinear(compute):
        model.zero_grad()
        losses, mask = compute(model, batch)
        (losses.pow(2) * torch.linspace(0.5, 2.0, losses.shape[1])).sum().backward()
        return losses.detach(), mask, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, plain_mask, plain_grads = nonlinear(token_losses)
    fused, mask, grads = nonlinear(lambda m, b: frozen_head_token_losses(m, b, chunk_tokens=7))
    assert torch.equal(mask, plain_mask) and (fused[~mask] == 0).all()
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-5)
    assert grads.keys() == plain_grads.keys() and all("lora_" in name for name in grads)
    for name in grads:  # float rounding, relative to each gradient's scale (the sums run in another order)
        scale = plain_grads[name].abs().max()
        assert scale > 0 and (grads[name] - plain_grads[name]).abs().max() <= 1e-5 * scale, name


def test_the_frozen_head_path_keeps_no_logits_and_yields_to_a_head_that_trains(tiny_dirs, monkeypatch):
    from tuna.objectives import chunked_ce

    model, tokenizer = load_base(str(tiny_dirs["llama"]))
    model, batch = with_lora(model), a_batch(len(tokenizer))
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.shape) or t, lambda t: t):
        chunked_ce.choose_token_losses(None, head_apart=True)(model, batch)
    assert not any(shape[-1] == len(tokenizer) for shape in kept)  # nothing vocabulary-wide is saved
    head = model.get_output_embeddings()
    head.weight.requires_grad_(True)  # as a method may do mid-run (HFT's rounds)
    losses, _ = chunked_ce.choose_token_losses(None, head_apart=True)(model, batch)
    losses.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert chunked_ce.choose_token_losses(None, head_apart=False) is token_losses
