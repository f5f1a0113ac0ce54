"""Direct Preference Optimization, with its IPO and hinge (SLiC) variants.

With h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)], answer log-probs summed over
the answer's tokens and π_ref the starting model, the per-pair loss is (`dpo.loss`):

    sigmoid (DPO)   −log σ(β h)
    ipo             (h − 1/(2β))²       IPO's empirical loss, β in the role of its τ
    hinge (SLiC)    max(0, 1 − β h)

IPO's paper defines h with whole-sequence log-likelihoods, as here; TRL divides them by the answer
length for IPO. The implicit rewards logged are β·(log π(y) − log π_ref(y)).

The reference enters only through each answer's summed log-prob, so it is a per-sequence number:
with LoRA it comes live from the model with its adapter switched off, otherwise it is computed once
before training (`objectives.reference_logps`) and carried by the batches.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from tuna.data.kinds import PAIRS
from tuna.models.forward import answer_logps, model_logits
from tuna.objectives.base import Objective
from tuna.objectives.pairwise import pair_stats, reference_answer_logps
from tuna.sections import Section


class DpoKnobs(Section):
    beta: float = Field(0.1, gt=0.0, description="strength of the pull towards the starting model (DPO's beta, IPO's tau)")
    loss: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="sigmoid (DPO), ipo (squared distance to "
                                                     "1/(2 beta)) or hinge (SLiC: max(0, 1 - beta h))")


def pair_losses(h: torch.Tensor, beta: float, kind: str) -> torch.Tensor:
    if kind == "sigmoid":
        return -F.logsigmoid(beta * h)
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return torch.relu(1 - beta * h)


def loss(model, batch: dict, step_weight: float, ctx) -> tuple[torch.Tensor, dict]:
    knobs = ctx.knobs
    logps, _ = answer_logps(model_logits(model, batch), batch["labels"])
    chosen_ratio, rejected_ratio = (logps - reference_answer_logps(batch, ctx)).chunk(2)
    value = pair_losses(chosen_ratio - rejected_ratio, knobs.beta, knobs.loss).sum() / step_weight
    chosen_logps, rejected_logps = logps.detach().chunk(2)
    return value, pair_stats(knobs.beta * chosen_ratio.detach(), knobs.beta * rejected_ratio.detach(),
                             chosen_logps, rejected_logps, step_weight)


OBJECTIVE = Objective(name="dpo", summary="preference pairs: DPO, IPO or hinge loss against the starting model "
                                          "(dpo.loss, dpo.beta)",
                      paper="Direct Preference Optimization: Your Language Model is Secretly a Reward Model; "
                            "A General Theoretical Paradigm to Understand Learning from Human Preferences (IPO)",
                      kind=PAIRS, loss=loss, knobs=DpoKnobs, needs_reference=True, reference_per_sequence=True)
