"""Dynamic Fine-Tuning (DFT): each token's SFT loss weighted by the model's own probability of it.

The weight is sg(p_t), the probability of the target token under the current model with the
gradient stopped, so the gradient of sg(p_t)·(−log p_t) is −∇p_t: confident tokens keep their full
pull while tokens the model finds unlikely (where plain SFT's 1/p_t blows up) pull gently. Token and
sequence weighting (`train.loss_weighting`) apply on top, as in SFT.
"""
from __future__ import annotations

import torch

from tuna.data.kinds import SEQUENCES
from tuna.models.forward import model_logits, next_token_losses
from tuna.objectives.base import PLAIN, Objective


def dft_terms(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position sg(p)·(−log p) and the plain −log p, both 0 where ignored."""
    losses, _ = next_token_losses(logits, labels)
    return torch.exp(-losses.detach()) * losses, losses


def loss(model, batch: dict, step_weight: float, ctx=PLAIN) -> tuple[torch.Tensor, dict]:
    weighted, nll = dft_terms(model_logits(model, batch), batch["labels"])
    weights = batch["weights"][:, 1:]
    return (weighted * weights).sum() / step_weight, {"nll": float((nll.detach() * weights).sum() / step_weight)}


OBJECTIVE = Objective(name="dft", summary="SFT with each token's loss weighted by its stop-gradient probability",
                      paper="On the Generalization of SFT: A Reinforcement Learning Perspective with Reward "
                            "Rectification (Dynamic Fine-Tuning)", kind=SEQUENCES, loss=loss)
