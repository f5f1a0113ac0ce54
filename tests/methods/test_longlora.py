import math
from types import SimpleNamespace

import pytest
import torch

from tuna.data.calibration import Calibration
from tuna.errors import UserError
from tuna.methods import REGISTRY
from tuna.models.load import load_base
from tuna.models.s2attn import GROUP, s2_attention

LONGLORA = REGISTRY["longlora"]
HEADS, KV_HEADS, DIM = 4, 2, 8


def attention_inputs(length: int, batch: int = 2, seed: int = 0):
    """query (B, 4, T, 8) and GQA key/value (B, 2, T, 8)."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, HEADS, length, DIM, generator=generator)
    key, value = (torch.randn(batch, KV_HEADS, length, DIM, generator=generator) for _ in range(2))
    return query, key, value


def attention_module(size: int):
    return SimpleNamespace(training=True, is_causal=True, num_key_value_groups=HEADS // KV_HEADS, **{GROUP: size})


def causal_attention(query, key, value):
    """Textbook causal softmax attention of one span; key/value heads repeated for GQA."""
    key, value = (t.repeat_interleave(query.shape[1] // t.shape[1], dim=1) for t in (key, value))
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    length = query.shape[2]
    scores = scores.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ value


def attention_by_spans(query, key, value, bounds: list[int]):
    """Causal attention inside each span [bounds[i], bounds[i+1]), computed span by span. (B, H, T, D)."""
    return torch.cat([causal_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b])
                      for a, b in zip(bounds, bounds[1:])], dim=2)


def s2(query, key, value, size, mask=None):
    """The attention function, output back in (B, heads, T, D)."""
    out, _ = s2_attention(attention_module(size), query, key, value, mask, scaling=DIM ** -0.5)
    return out.transpose(1, 2)


def test_one_group_over_the_whole_sequence_is_full_causal_attention():
    query, key, value = attention_inputs(12)
    torch.testing.assert_close(s2(query, key, value, size=12), causal_attention(query, key, value),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [16, 14])  # 14: not a multiple of the group size 4
def test_plain_heads_attend_within_groups_and_shifted_heads_within_groups_offset_by_half(length):
    query, key, value = attention_inputs(length)
    out = s2(query, key, value, size=4)
    plain_bounds = list(range(0, length, 4)) + [length]  # [0, 4), [4, 8), ...
    shifted_bounds = [0] + list(range(2, length, 4)) + [length]  # [0, 2), [2, 6), [6, 10), ...: no wrap-around
    torch.testing.assert_close(out[:, :2], attention_by_spans(query, key, value, plain_bounds)[:, :2],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 2:], attention_by_spans(query, key, value, shifted_bounds)[:, 2:],
                               atol=1e-5, rtol=1e-5)


def test_a_token_sees_only_its_own_and_the_half_shifted_group():
    """With groups of 4: token 13 is in plain group [12, 16) and shifted group [10, 14), so every other
    token, in particular one from a group further back, has exactly zero influence on it. Token 1 is in
    the shifted half group [0, 2): it sees nothing of the end of the sequence (no wrap-around)."""
    query, key, value = (t.requires_grad_() for t in attention_inputs(16, batch=1))
    for token, visible in ((13, {10, 11, 12, 13}), (1, {0, 1})):
        out = s2(query, key, value, size=4)
        grads = torch.autograd.grad(out[:, :, token].sum(), (query, key, value))
        reached = {position for g in grads for position in g.abs().sum(dim=(0, 1, 3)).nonzero().flatten().tolist()}
        assert reached == visible, token


def padding_mask(real: torch.Tensor):
    """transformers' SDPA mask for a (B, T) boolean mask of real tokens."""
    from transformers.masking_utils import sdpa_mask

    batch, length = real.shape
    return sdpa_mask(batch_size=batch, q_length=length, kv_length=length, attention_mask=real, allow_is_causal_skip=False)


def test_right_padding_leaves_the_real_tokens_exact_and_other_padding_is_refused():
    """Row 1 is 6 real tokens and 10 padding: groups [8, 12) and [12, 16) hold padding only."""
    query, key, value = attention_inputs(16)
    real = torch.ones(2, 16, dtype=torch.bool)
    real[1, 6:] = False
    padded = s2(query, key, value, size=4, mask=padding_mask(real))
    unpadded = s2(query, key, value, size=4)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[0], unpadded[0])
    torch.testing.assert_close(padded[1, :, :6], unpadded[1, :, :6])
    with pytest.raises(ValueError, match="right-padded"):
        s2(query, key, value, size=4, mask=padding_mask(real.flip(1)))


def context(max_tokens: int) -> Calibration:
    """What prepare reads the context length (data.max_tokens) from; no calibration batches are read."""
    def unread(n):
        raise AssertionError("longlora reads no calibration batches")

    return Calibration(task=unread, general=unread, max_tokens=max_tokens)


def prepared(tiny_model_dir, tiny_recipe, ratio=0.25, **sections):
    """LongLoRA on the tiny model, with groups of ratio × 16 tokens (the context length, data.max_tokens)."""
    recipe = tiny_recipe(method="longlora", lora={"r": 4, "dropout": 0.0}, longlora={"group_size_ratio": ratio},
                         data={"max_tokens": 16}, **sections)
    method = LONGLORA.from_recipe(recipe)
    return method.prepare(load_base(str(tiny_model_dir))[0], context(recipe.data.max_tokens))


def pretend_trained(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)


IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])


def test_eval_mode_is_full_attention_and_training_mode_is_s2(tiny_model_dir, tiny_recipe):
    model = prepared(tiny_model_dir, tiny_recipe)
    pretend_trained(model)
    full_attention = prepared(tiny_model_dir, tiny_recipe, ratio=1.0)  # one group: plain causal attention
    full_attention.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference = full_attention.train()(IDS).logits
        torch.testing.assert_close(model.eval()(IDS).logits, reference)
        assert not torch.allclose(model.train()(IDS).logits, reference, atol=1e-3)


def test_exactly_lora_factors_embeddings_and_norms_train(tiny_model_dir, tiny_recipe):
    model = prepared(tiny_model_dir, tiny_recipe)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    factors = {name for name in trainable if ".lora_A." in name or ".lora_B." in name}
    assert len(factors) == 2 * 2 * 7  # A and B on q k v o gate up down of both blocks
    norms = [f"layers.{i}.{norm}" for i in range(2) for norm in ("input_layernorm", "post_attention_layernorm")]
    copies = {f"base_model.model.model.{name}.modules_to_save.default.weight" for name in ["embed_tokens", "norm", *norms]}
    assert trainable - factors == copies
    frozen = [p for name, p in model.named_parameters() if name.endswith(("base_layer.weight", "original_module.weight"))]
    assert len(frozen) == 14 + 6 and not any(p.requires_grad for p in frozen)


def test_tied_head_follows_the_trained_embedding(tiny_model_dir, tiny_recipe):
    model = prepared(tiny_model_dir, tiny_recipe)
    pretend_trained(model)
    embedding = model.get_input_embeddings()
    hidden = torch.randn(1, 1, embedding.weight.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(model.get_output_embeddings()(hidden), hidden @ embedding.weight.T)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])  # tied and untied embeddings
def test_saved_adapter_loads_with_plain_peft_and_reproduces_the_logits(tiny_dirs, tiny_recipe, tmp_path, kind):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = prepared(tiny_dirs[kind], tiny_recipe, model=str(tiny_dirs[kind]))
    pretend_trained(model)
    LONGLORA().save_final(model, tmp_path)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dirs[kind]), tmp_path).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs[kind]).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, model.eval()(IDS).logits)
        assert not torch.allclose(plain(IDS).logits, base(IDS).logits, atol=1e-3)


def test_packed_batching_and_base_changing_inits_are_refused(tiny_model_dir, tiny_recipe):
    model = load_base(str(tiny_model_dir))[0]
    with pytest.raises(UserError, match="cannot keep packed examples apart"):  # the config refuses it (`packs`)
        tiny_recipe(method="longlora", data={"batching": "packed"})
    with pytest.raises(UserError, match="lora.init: default or gaussian, not pissa"):
        LONGLORA.from_recipe(tiny_recipe(method="longlora", lora={"init": "pissa"})).prepare(model)


def test_groups_are_a_fraction_of_the_context_length_so_short_rows_get_full_attention(tiny_model_dir, tiny_recipe):
    model = prepared(tiny_model_dir, tiny_recipe)  # G = 0.25 × 16 = 4 tokens, whatever the row length
    assert {getattr(m, GROUP) for m in model.modules() if hasattr(m, GROUP)} == {4}
    pretend_trained(model)
    with torch.no_grad():
        torch.testing.assert_close(model.train()(IDS[:, :4]).logits, model.eval()(IDS[:, :4]).logits)
        assert not torch.allclose(model.train()(IDS[:, :5]).logits, model.eval()(IDS[:, :5]).logits, atol=1e-3)
