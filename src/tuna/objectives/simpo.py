"""SimPO: a reference-free preference loss on length-normalised log-probs, with a target margin.

    loss = −log σ( β/|y_w| · log π(y_w) − β/|y_l| · log π(y_l) − γ )

|y| is the answer's token count, so the implicit reward β/|y| · log π(y) (logged as `rewards/*`) is
β times the answer's mean token log-prob. No reference model is kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from tuna.data.kinds import PAIRS
from tuna.models.forward import answer_logps, model_logits
from tuna.objectives.base import Objective
from tuna.objectives.pairwise import pair_stats
from tuna.sections import Section


class SimpoKnobs(Section):
    beta: float = Field(2.0, gt=0.0, description="scale of the length-normalised reward")
    gamma: float = Field(1.0, ge=0.0, description="target reward margin (gamma/beta = 0.5 by default)")


def mean_answer_logps(model, batch: dict) -> torch.Tensor:
    """Per row: the mean log-prob of the answer's tokens."""
    total, count = answer_logps(model_logits(model, batch), batch["labels"])
    return total / count.clamp(min=1)


def loss(model, batch: dict, step_weight: float, ctx) -> tuple[torch.Tensor, dict]:
    knobs = ctx.knobs
    chosen, rejected = mean_answer_logps(model, batch).chunk(2)
    value = -F.logsigmoid(knobs.beta * (chosen - rejected) - knobs.gamma).sum() / step_weight
    chosen, rejected = chosen.detach(), rejected.detach()
    return value, pair_stats(knobs.beta * chosen, knobs.beta * rejected, chosen, rejected, step_weight)


OBJECTIVE = Objective(name="simpo", summary="preference pairs, reference-free: length-normalised rewards with a "
                                            "target margin (simpo.beta, simpo.gamma)",
                      paper="SimPO: Simple Preference Optimization with a Reference-Free Reward", kind=PAIRS,
                      loss=loss, knobs=SimpoKnobs)
