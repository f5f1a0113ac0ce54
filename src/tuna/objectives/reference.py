"""The reference model: the model as training found it, for objectives anchored to it.

With an adapter whose disabling restores the untouched base (LoRA with a default init), the
reference is the trained model with the adapter switched off: no second copy in memory. Otherwise
it is a frozen copy of the model taken before the method prepared it.
"""
from __future__ import annotations

import copy

import torch

from tuna.models.forward import model_logits


def frozen_copy(model):
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def reference_logits(model, frozen=None):
    """batch -> logits of the starting model, without gradients."""

    @torch.no_grad()
    def logits(batch: dict) -> torch.Tensor:
        if frozen is not None:
            return model_logits(frozen, batch)
        with model.disable_adapter():
            return model_logits(model, batch)

    return logits
