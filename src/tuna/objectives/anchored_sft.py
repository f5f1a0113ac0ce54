"""Anchored SFT (ASFT): DFT plus a KL regulariser to the starting model, which stops DFT's drift.

    loss = mean_t[ sg(p_t) · (−log p_t) ] + β · mean_t KL_t

KL_t is KL(π_ref ‖ π_θ) at position t by default (`anchored_sft.kl: ref_to_policy`), as the authors'
released code computes it (`kl_div(log π_θ, π_ref)`, LLaMA-Factory's port too); `policy_to_ref` gives
KL(π_θ ‖ π_ref), the direction an earlier reading of the paper took. Both means run over the same
target positions with the same weights (`train.loss_weighting`), and the KL is the full one over the
vocabulary at each position, not a single-sample estimate.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from tuna.data.kinds import SEQUENCES
from tuna.models.forward import model_logits
from tuna.objectives.base import Objective
from tuna.objectives.dft import dft_terms
from tuna.sections import Section


class AnchoredSftKnobs(Section):
    kl_beta: float = Field(0.05, ge=0.0, description="weight of the KL to the starting model added to the DFT loss")
    kl: Literal["ref_to_policy", "policy_to_ref"] = Field(
        "ref_to_policy", description="ref_to_policy: KL(starting model || policy), the authors' code; "
                                     "policy_to_ref: KL(policy || starting model)")


def token_kl(logits: torch.Tensor, reference_logits: torch.Tensor, direction: str = "ref_to_policy") -> torch.Tensor:
    """KL(π_ref ‖ π_θ) (or, `policy_to_ref`, KL(π_θ ‖ π_ref)) per position, over the vocabulary."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_ref = F.log_softmax(reference_logits.float(), dim=-1)
    if direction == "policy_to_ref":
        return (log_p.exp() * (log_p - log_ref)).sum(-1)
    return (log_ref.exp() * (log_ref - log_p)).sum(-1)


def loss(model, batch: dict, step_weight: float, ctx) -> tuple[torch.Tensor, dict]:
    weights = batch["weights"][:, 1:]
    logits = model_logits(model, batch)
    weighted, nll = dft_terms(logits, batch["labels"])
    kl = token_kl(logits[:, :-1], ctx.reference(batch)[:, :-1], ctx.knobs.kl)
    beta = ctx.knobs.kl_beta
    value = ((weighted + beta * kl) * weights).sum() / step_weight
    return value, {"kl": float((kl.detach() * weights).sum() / step_weight),
                   "nll": float((nll.detach() * weights).sum() / step_weight)}


OBJECTIVE = Objective(name="anchored_sft", summary="DFT plus beta x KL to the starting model (anchored_sft.kl_beta)",
                      paper="Anchored Supervised Fine-Tuning", kind=SEQUENCES, loss=loss, knobs=AnchoredSftKnobs,
                      needs_reference=True)
