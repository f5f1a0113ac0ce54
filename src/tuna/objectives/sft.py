"""Supervised fine-tuning: next-token cross-entropy on the labelled tokens.

The loss is the *weighted sum* over this micro-batch's target tokens divided by `step_weight`, the
total weight of the whole optimizer step (see `data.batch` for token vs sequence weighting), so
gradient accumulation splits a step without changing what it computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tuna.data.render import IGNORE

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def token_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy (0 where ignored) and the mask of positions that count.

    Packed batches have `position_ids` and no attention mask; padded ones the reverse. No cache: with
    one, transformers would not detect packed rows in its eager/SDPA masks.
    """
    logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).logits
    targets = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                             ignore_index=IGNORE, reduction="none").view_as(targets)
    return losses, targets != IGNORE


def loss(model, batch: dict[str, torch.Tensor], step_weight: float) -> tuple[torch.Tensor, dict]:
    losses, mask = token_losses(model, batch)
    return (losses * batch["weights"][:, 1:]).sum() / step_weight, {"targets": int(mask.sum())}


def batch_weight(batch: dict[str, torch.Tensor]) -> float:
    """This micro-batch's share of the step normaliser: target tokens, or sequences."""
    return float(batch["weights"].sum())
