"""Exact attention for packed rows: each example attends only to itself.

A packed row has no attention mask; its `position_ids` restart at every example. With flash-attn
installed on a GPU, transformers' `flash_attention_2` already reads those as varlen boundaries.
Everywhere else tuna registers `tuna_packed`: it splits the row at the restarts and runs SDPA once
per example, so the cost is the sum of the squared example lengths rather than the squared row
length, and no row-sized mask is ever built. Batches that do carry a mask (padded batches,
generation with a cache) go to transformers' own SDPA path unchanged.
"""
from __future__ import annotations

import torch

NAME = "tuna_packed"


def document_spans(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each example in one row: a new one begins wherever positions do not count up by 1."""
    starts = [0] + ((position_ids[1:] - position_ids[:-1]) != 1).nonzero().flatten().add(1).tolist()
    return list(zip(starts, starts[1:] + [position_ids.numel()]))


def packed_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA per example of a packed row; query/key/value are (batch, heads, length, head_dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows = []
    for b in range(query.shape[0]):
        spans = document_spans(position_ids[min(b, position_ids.shape[0] - 1)])
        parts = [sdpa_attention_forward(module, query[b : b + 1, :, s:e], key[b : b + 1, :, s:e],
                                        value[b : b + 1, :, s:e], None, **kwargs)[0] for s, e in spans]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), None


def packed_mask(*args, **kwargs):
    """No mask for unpadded input (packed or not: `packed_attention` reads the positions); SDPA's otherwise."""
    from transformers.masking_utils import sdpa_mask

    return None if kwargs.get("attention_mask") is None else sdpa_mask(*args, **kwargs)


def use_packed_attention(model) -> str:
    """Switch `model` to an attention implementation that keeps packed examples apart; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.utils import is_flash_attn_2_available

    if model.device.type == "cuda" and is_flash_attn_2_available():
        name = "flash_attention_2"
    else:
        AttentionInterface.register(NAME, packed_attention)
        AttentionMaskInterface.register(NAME, packed_mask)
        name = NAME
    model.set_attn_implementation(name)
    return name
