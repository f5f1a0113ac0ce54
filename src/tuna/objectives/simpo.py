"""SimPO: a reference-free preference loss on length-normalised log-probs, with a target margin.

    loss = −log σ( β/|y_w| · log π(y_w) − β/|y_l| · log π(y_l) − γ )

|y| is the answer's token count, so the implicit reward β/|y| · log π(y) (logged as `rewards/*`) is
β times the answer's mean token log-prob. No reference model is kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tuna.objectives.base import Objective
from tuna.objectives.pairwise import answer_logps, batch_weight, pair_stats
from tuna.objectives.sft import model_logits


def mean_answer_logps(model, batch: dict) -> torch.Tensor:
    """Per row: the mean log-prob of the answer's tokens."""
    total, count = answer_logps(model_logits(model, batch), batch["labels"])
    return total / count.clamp(min=1)


def loss(model, batch: dict, step_weight: float, ctx) -> tuple[torch.Tensor, dict]:
    knobs = ctx.recipe.simpo
    chosen, rejected = mean_answer_logps(model, batch).chunk(2)
    value = -F.logsigmoid(knobs.beta * (chosen - rejected) - knobs.gamma).sum() / step_weight
    chosen, rejected = chosen.detach(), rejected.detach()
    return value, pair_stats(knobs.beta * chosen, knobs.beta * rejected, chosen, rejected, step_weight)


OBJECTIVE = Objective(name="simpo", summary="preference pairs, reference-free: length-normalised rewards with a "
                                            "target margin (simpo.beta, simpo.gamma)",
                      paper="SimPO: Simple Preference Optimization with a Reference-Free Reward", loss=loss,
                      batch_weight=batch_weight, pairs=True)
