"""Held-out loss and perplexity, weighted per target token."""
from __future__ import annotations

import contextlib
import math

import torch

from tuna.data.batch import eval_batches
from tuna.data.render import Rendered
from tuna.objectives.sft import token_losses


@torch.no_grad()
def heldout_loss(model, items: list[Rendered], *, batch_size: int, pad_id: int,
                 device: torch.device, autocast=contextlib.nullcontext) -> dict[str, float]:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in eval_batches(items, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            losses, mask = token_losses(model, batch)
        total += float(losses.sum())
        count += int(mask.sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}
