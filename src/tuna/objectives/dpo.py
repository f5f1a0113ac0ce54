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

import torch
import torch.nn.functional as F

from tuna.objectives.base import Objective
from tuna.objectives.pairwise import answer_logps, batch_weight, pair_stats, reference_answer_logps
from tuna.objectives.sft import model_logits


def pair_losses(h: torch.Tensor, beta: float, kind: str) -> torch.Tensor:
    if kind == "sigmoid":
        return -F.logsigmoid(beta * h)
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return torch.relu(1 - beta * h)


def loss(model, batch: dict, step_weight: float, ctx) -> tuple[torch.Tensor, dict]:
    knobs = ctx.recipe.dpo
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
                      loss=loss, batch_weight=batch_weight, needs_reference=True, pairs=True,
                      reference_per_sequence=True)
