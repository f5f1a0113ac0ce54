"""ORPO: the chosen answer's NLL plus an odds-ratio preference term, with no reference model.

With P(y) = exp(mean token log-prob of the answer) and odds(y) = P(y) / (1 − P(y)):

    loss = −(1/|y_w|) log π(y_w) + λ · ( −log σ( log odds(y_w) − log odds(y_l) ) )

λ is `orpo.beta` (TRL's name for it). The NLL term is each pair's mean over its chosen answer's tokens,
as in the paper's per-example L_SFT (TRL averages over all chosen tokens of a batch instead). Logged
besides the rewards (λ times the mean answer log-probs, as TRL): `train/nll` and `train/log_odds_ratio`,
the mean of log odds(y_w) − log odds(y_l).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from tuna.data.kinds import PAIRS
from tuna.objectives.base import Objective
from tuna.objectives.pairwise import pair_stats
from tuna.objectives.simpo import mean_answer_logps
from tuna.sections import Section


class OrpoKnobs(Section):
    beta: float = Field(0.1, ge=0.0, description="weight of the odds-ratio term added to the chosen NLL (lambda in the paper)")


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log(P / (1 − P)) for P = exp(mean_logps) < 1; a certain answer (P rounding to 1) is held just below it."""
    mean_logps = mean_logps.clamp(max=-1e-6)
    return mean_logps - torch.log(-torch.expm1(mean_logps))


def loss(model, batch: dict, step_weight: float, ctx) -> tuple[torch.Tensor, dict]:
    beta = ctx.knobs.beta
    chosen, rejected = mean_answer_logps(model, batch).chunk(2)
    ratio = log_odds(chosen) - log_odds(rejected)
    value = (-chosen - beta * F.logsigmoid(ratio)).sum() / step_weight
    chosen, rejected = chosen.detach(), rejected.detach()
    return value, {**pair_stats(beta * chosen, beta * rejected, chosen, rejected, step_weight),
                   "nll": float(-chosen.sum()) / step_weight, "log_odds_ratio": float(ratio.detach().sum()) / step_weight}


OBJECTIVE = Objective(name="orpo", summary="preference pairs, reference-free: chosen NLL + beta x odds-ratio loss "
                                           "(orpo.beta)",
                      paper="ORPO: Monolithic Preference Optimization without Reference Model", kind=PAIRS,
                      loss=loss, knobs=OrpoKnobs)
