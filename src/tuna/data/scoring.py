"""What a model makes of rendered examples, without generating: held-out loss and per-example log-probs.

Both score the labelled tokens only, in batches sorted by length so that little compute goes to
padding; the model is in eval mode and without gradients meanwhile.
"""
from __future__ import annotations

import contextlib
import math

import torch
from tqdm.auto import tqdm

from tuna.data.batch import collate, eval_batches
from tuna.data.render import Rendered
from tuna.models.forward import answer_logps, evaluating, model_logits, token_losses


def heldout_loss(model, items: list[Rendered], *, batch_size: int, pad_id: int,
                 device: torch.device, autocast=contextlib.nullcontext) -> dict[str, float]:
    """Mean loss per target token over `items`, its perplexity, and the number of target tokens."""
    total, count = 0.0, 0
    with evaluating(model):
        for batch in eval_batches(items, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                losses, mask = token_losses(model, batch)
            total += float(losses.sum())
            count += int(mask.sum())
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}


def labelled_logprobs(model, items: list[Rendered], *, batch_size: int, pad_id: int, progress: bool = False,
                      desc: str = "score") -> list[tuple[float, int]]:
    """Each item's (summed log-prob of its labelled tokens, their number), in the order given."""
    device = next(model.parameters()).device
    results: list = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    with evaluating(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            chunk = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([items[i] for i in chunk], pad_id).items()}
            sums, counts = answer_logps(model_logits(model, batch), batch["labels"])
            for i, total, count in zip(chunk, sums.tolist(), counts.tolist()):
                results[i] = (total, count)
    return results
