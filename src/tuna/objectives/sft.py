"""Supervised fine-tuning: next-token cross-entropy on the labelled tokens.

The loss is a *sum* over this micro-batch's target tokens divided by `total_targets`, the target
count of the whole optimizer step, so gradient accumulation weights every token equally.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tuna.data.render import IGNORE


def token_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy (0 where ignored) and the mask of positions that count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                             ignore_index=IGNORE, reduction="none").view_as(targets)
    return losses, targets != IGNORE


def loss(model, batch: dict[str, torch.Tensor], total_targets: int) -> tuple[torch.Tensor, dict]:
    losses, mask = token_losses(model, batch)
    return losses.sum() / total_targets, {"targets": int(mask.sum())}


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())
