"""One forward pass on a collated batch, and the per-token numbers every loss and metric builds on.

A batch is padded (`attention_mask`) or packed (`position_ids`, no mask); `labels` hold the target
token ids, IGNORE where nothing is scored. Position t's logits are scored against label t+1.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

IGNORE = -100  # the label of a position that is not scored (PyTorch's and transformers' convention)
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def model_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits for a padded or packed batch, one per input position. No cache: with one, transformers would not
    detect packed rows in its eager/SDPA masks. A model that puts virtual tokens before the input (prompt
    tuning) returns their positions too; the input's are the last ones."""
    logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).logits
    return logits[:, -batch["input_ids"].shape[1]:]


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) cross-entropy per position (0 where ignored) and the mask of positions that count."""
    targets = labels[:, 1:]
    shifted = F.pad(targets, (0, 1), value=IGNORE)  # the labels move, not the logits: no copy of them
    losses = F.cross_entropy(logits.float().flatten(0, 1), shifted.flatten(), ignore_index=IGNORE, reduction="none")
    return losses.view_as(shifted)[:, :-1], targets != IGNORE


def token_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return next_token_losses(model_logits(model, batch), batch["labels"])


def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-prob of its labelled tokens, and how many there are."""
    losses, mask = next_token_losses(logits, labels)
    return -losses.sum(-1), mask.sum(-1)


@contextlib.contextmanager
def evaluating(model):
    """The model in eval mode (no dropout) and without gradients inside the block, as it was after it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
