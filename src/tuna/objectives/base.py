"""The Objective interface: what a training step minimises.

`loss(model, batch, step_weight, ctx)` returns (this micro-batch's share of the step loss, stats to
log). `step_weight` is the whole optimizer step's normaliser (`batch_weight` summed over its
micro-batches), so accumulation splits a step without changing it. `ctx.reference` gives the
starting model's logits for objectives that stay anchored to it (ASFT, DPO).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str
    paper: str
    loss: Callable[..., tuple[torch.Tensor, dict]]
    batch_weight: Callable[[dict], float]
    needs_reference: bool = False


@dataclass
class ObjectiveContext:
    recipe: object
    reference: Callable[[dict], torch.Tensor] | None = None  # batch -> the starting model's logits
