"""Supervised fine-tuning: next-token cross-entropy on the labelled tokens.

The loss is the *weighted sum* over this micro-batch's target tokens divided by `step_weight`, the
total weight of the whole optimizer step (see `data.batch` for token vs sequence weighting), so
gradient accumulation splits a step without changing what it computes. The per-token losses come
from `ctx.token_losses`: the plain ones, or chunked ones under `train.loss_chunk_tokens`.
"""
from __future__ import annotations

import torch

from tuna.data.kinds import SEQUENCES
from tuna.objectives.base import PLAIN, Objective, ObjectiveContext


def loss(model, batch: dict[str, torch.Tensor], step_weight: float,
         ctx: ObjectiveContext = PLAIN) -> tuple[torch.Tensor, dict]:
    losses, mask = ctx.token_losses(model, batch)
    return (losses * batch["weights"][:, 1:]).sum() / step_weight, {"targets": int(mask.sum())}


OBJECTIVE = Objective(name="sft", summary="next-token cross-entropy on the labelled tokens",
                      paper="(supervised fine-tuning)", kind=SEQUENCES, loss=loss, chunked_loss=True)
