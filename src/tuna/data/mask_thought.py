"""Masked Thought ("Masked Thought: Simply Masking Partial Reasoning Steps Can Improve Mathematical
Reasoning Learning of Language Models").

A random fraction of the *input* tokens inside the response (the positions that carry labels) is
replaced with a mask token; the labels keep the original tokens, so the model learns to predict the
reasoning through gaps in its own context. The prompt is never masked.
"""
from __future__ import annotations

import torch

from tuna.data.render import IGNORE


def mask_token_id(tokenizer) -> int:
    """The tokenizer's mask token, else its unknown token, else padding: no new token is added."""
    for candidate in (tokenizer.mask_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id):
        if candidate is not None:
            return candidate
    raise ValueError("the tokenizer has no mask, unknown or padding token to mask with")


def mask_thought(batch: dict[str, torch.Tensor], ratio: float, mask_id: int, generator: torch.Generator) -> dict:
    response = batch["labels"] != IGNORE
    chosen = response & (torch.rand(response.shape, generator=generator) < ratio)
    return {**batch, "input_ids": torch.where(chosen, mask_id, batch["input_ids"])}
