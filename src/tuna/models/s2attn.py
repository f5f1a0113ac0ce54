"""Shifted sparse attention (S2-Attn, LongLoRA), used while training only.

The sequence is cut into groups of G tokens, and each token attends causally within its group, so
attention costs O(T·G) instead of O(T²). Half of the heads use groups shifted by G/2, so information
flows between neighbouring groups. G is fixed for the run, a fraction of the target context length
as in the paper (2,048 of 8,192), so a row no longer than G gets full attention. In eval mode this
is transformers' own SDPA attention too, so evaluation and generation see full attention.

Two choices differ from the paper's code, which rolls the shifted heads' tokens by G/2:
- No wrap-around. Rolling puts the last G/2 tokens of the sequence in the same group as the first
  G/2 tokens, *before* them, so early tokens would see the end of the sequence. Here the shifted
  heads' groups are [0, G/2), [G/2, 3G/2), ... and never wrap.
- T need not be a multiple of G: the last group is shorter.
Every group is laid out in G slots, its tokens first and the spare slots after them, so plain
causal SDPA per group is exact for the tokens and needs no mask (fast kernels stay available).
Right padding needs no mask either: causal attention never looks at the padding after a real
token. Padding anywhere else is refused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "tuna_s2attn"
GROUP = "tuna_s2attn_group_size"  # attribute each attention module carries


def group_layout(length: int, size: int, first: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups [0, first), [first, first + size), ... laid out in `size` slots each, tokens first.

    Returns (the token each slot reads, the slot of each token). A spare slot reads any token: it sits
    after its group's tokens, so causal attention never lets them see it, and its output is dropped.
    """
    starts = torch.tensor([0, *range(first, length, size)], device=device)
    ends = torch.cat([starts[1:], torch.tensor([length], device=device)])
    slots = starts[:, None] + torch.arange(size, device=device)
    holds_token = slots < ends[:, None]
    return slots.clamp(max=length - 1).flatten(), holds_token.flatten().nonzero().flatten()


def grouped_attention(query, key, value, size: int, first: int, dropout: float, scaling) -> torch.Tensor:
    """Causal attention within each group; (B, heads, T, D) in and out, all with the same heads."""
    batch, heads, length, dim = query.shape
    token_of_slot, slot_of_token = group_layout(length, size, first, query.device)
    q, k, v = (t.index_select(2, token_of_slot).view(batch, -1, size, dim) for t in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling)
    return out.reshape(batch, heads, -1, dim).index_select(2, slot_of_token)


def check_right_padded(attention_mask) -> None:
    """transformers' boolean mask (B, 1, T, T) is causal AND real-key, so its diagonal marks the real tokens."""
    if attention_mask is None:
        return
    real = attention_mask[:, 0].diagonal(dim1=-2, dim2=-1)
    if (real[:, 1:] & ~real[:, :-1]).any():
        raise ValueError("S2-Attn needs right-padded batches: a real token follows padding")


def s2_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention function: S2-Attn in training, SDPA otherwise. Output (B, T, heads, D)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    length, size = query.shape[2], getattr(module, GROUP)
    if not module.training or size >= length or key.shape[2] != length:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    check_right_padded(attention_mask)
    repeats = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, repeats), repeat_kv(value, repeats)
    half = query.shape[1] // 2  # heads [0, half) keep the groups, the others are shifted by G/2
    plain = grouped_attention(query[:, :half], key[:, :half], value[:, :half], size, size, dropout, scaling)
    shifted = grouped_attention(query[:, half:], key[:, half:], value[:, half:], size, size // 2, dropout, scaling)
    return torch.cat([plain, shifted], dim=1).transpose(1, 2).contiguous(), None


def use_s2_attention(model, size: int, attention_modules) -> None:
    """Switch `model` to S2-Attn with groups of `size` tokens while training."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, s2_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    for module in attention_modules:
        setattr(module, GROUP, size)
    model.set_attn_implementation(NAME)
