"""Sparse fine-tuning: train a fixed subset of weight entries, chosen by gradient magnitude.

In the spirit of SpIEL ("Scaling Sparse Fine-Tuning to Large Language Models") and Composable
Sparse Fine-Tuning: each linear weight of the decoder layers keeps its pretrained values frozen and
gains a trainable vector of deltas at a fixed set of flat indices, W = W0 + scatter(indices, delta).
The indices are the `sparse.density` fraction of each tensor's entries with the largest gradient
magnitude, summed over `sparse.calibration_batches` micro-batches of training data before training.
Only the deltas (and their AdamW state) are optimised, so the optimizer memory is density-sized,
and weight decay pulls the deltas back toward the pretrained values. The result is saved as a
sparse delta that composes with others by addition. SpIEL's prune-and-regrow cycles are not done:
the subset stays fixed for the run.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from tuna.errors import UserError
from tuna.methods.base import Method
from tuna.models.layers import decoder_layers
from tuna.models.sparse_delta import save_delta
from tuna.sections import Section


class SparseKnobs(Section):
    density: float = Field(0.01, gt=0.0, le=1.0, description="fraction of the decoder layers' weight entries that train")
    calibration_batches: int = Field(8, ge=1, description="micro-batches whose gradient chooses the entries")


class SparseDelta(nn.Module):
    """The parametrization W0 -> W0 + scatter(indices, delta); W0 stays frozen."""

    def __init__(self, indices: torch.Tensor):
        super().__init__()
        self.register_buffer("indices", indices)
        self.delta = nn.Parameter(torch.zeros(len(indices), device=indices.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(-1).index_add(0, self.indices, self.delta.to(weight.dtype)).view_as(weight)


def candidate_linears(model) -> dict[str, nn.Linear]:
    """Every linear layer inside the decoder blocks, by its module path."""
    blocks = {id(m) for layer in decoder_layers(model) for m in layer.modules()}
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) in blocks}


def gradient_scores(model, linears: dict[str, nn.Linear], batches: list[dict]) -> dict[str, torch.Tensor]:
    """|sum of the loss gradients| over the calibration batches, per candidate weight."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in linears.values():
        module.weight.requires_grad_(True)
    for batch in batches:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
    scores = {name: module.weight.grad.abs() for name, module in linears.items()}
    for module in linears.values():
        module.weight.grad = None
        module.weight.requires_grad_(False)
    return scores


def choose_indices(scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """The top `density` fraction of each tensor's entries by score, as sorted flat indices."""
    chosen = {}
    for name, score in scores.items():
        k = max(1, round(density * score.numel()))
        chosen[name] = torch.topk(score.reshape(-1), k).indices.sort().values
    return chosen


def attach(model, indices: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    for name, idx in indices.items():
        parametrize.register_parametrization(modules[name], "weight", SparseDelta(idx))


def parametrized(model) -> dict[str, SparseDelta]:
    """Module path -> its SparseDelta."""
    return {name: module.parametrizations.weight[0] for name, module in model.named_modules()
            if parametrize.is_parametrized(module, "weight")}


class Sparse(Method):
    name = "sparse"
    summary = "train a fixed fraction of weight entries chosen by gradient; saves a sparse delta"
    paper = ("Scaling Sparse Fine-Tuning to Large Language Models (SpIEL); Composable Sparse Fine-Tuning "
             "for Cross-Lingual Transfer")
    default_lr = 2e-4
    sections = {"sparse": SparseKnobs}

    def prepare(self, model, calibration=None):
        if calibration is None:
            raise UserError("method sparse needs calibration data to choose its entries")
        linears = candidate_linears(model)
        scores = gradient_scores(model, linears, calibration.task(self.sparse.calibration_batches))
        attach(model, choose_indices(scores, self.sparse.density))
        return model

    def extra_state(self, model) -> dict:
        return {name: p.indices.cpu() for name, p in parametrized(model).items()}

    def load_extra_state(self, model, state: dict) -> None:
        for name, p in parametrized(model).items():
            p.indices.copy_(state[name])

    def save_final(self, model, out) -> None:
        modules, deltas = dict(model.named_modules()), parametrized(model)
        delta = {f"{name}.weight": (p.indices, p.delta) for name, p in deltas.items()}
        shapes = {f"{name}.weight": list(modules[name].parametrizations.weight.original.shape) for name in deltas}
        save_delta(delta, shapes, out)
