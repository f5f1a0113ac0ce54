"""Anchored SFT (ASFT): DFT plus a KL regulariser to the starting model, which stops DFT's drift.

    loss = mean_t[ sg(p_t) · (−log p_t) ] + β · mean_t KL(π_θ(·|x_<t) ‖ π_ref(·|x_<t))

Both means run over the same target positions with the same weights (`train.loss_weighting`), and
the KL is the full one over the vocabulary at each position, not a single-sample estimate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tuna.objectives.base import Objective
from tuna.objectives.dft import dft_terms
from tuna.objectives.sft import batch_weight, model_logits


def token_kl(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """KL(π_θ ‖ π_ref) per position, over the vocabulary."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_ref = F.log_softmax(reference_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_ref)).sum(-1)


def loss(model, batch: dict, step_weight: float, ctx) -> tuple[torch.Tensor, dict]:
    weights = batch["weights"][:, 1:]
    logits = model_logits(model, batch)
    weighted, nll = dft_terms(logits, batch["labels"])
    kl = token_kl(logits[:, :-1], ctx.reference(batch)[:, :-1])
    beta = ctx.recipe.anchored_sft.kl_beta
    value = ((weighted + beta * kl) * weights).sum() / step_weight
    return value, {"kl": float((kl.detach() * weights).sum() / step_weight),
                   "nll": float((nll.detach() * weights).sum() / step_weight)}


OBJECTIVE = Objective(name="anchored_sft", summary="DFT plus beta x KL to the starting model (anchored_sft.kl_beta)",
                      paper="Anchored Supervised Fine-Tuning", loss=loss, batch_weight=batch_weight,
                      needs_reference=True)
