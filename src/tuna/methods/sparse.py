"""Sparse fine-tuning (SpIEL, "Scaling Sparse Fine-Tuning to Large Language Models"; Composable Sparse FT).

Each linear weight of the decoder layers keeps its pretrained values frozen and gains a trainable
vector of deltas at a set of flat indices, W = W0 + scatter(indices, delta). The first indices are the
`sparse.density` fraction of each tensor's entries with the largest gradient magnitude, summed over
`sparse.calibration_batches` micro-batches of training data. Only the deltas (and their AdamW state)
are optimised, and weight decay pulls them back toward the pretrained values.

SpIEL's cycle (`sparse.regrow`, the default): the active deltas train; every `sparse.regrow_every`
steps, in each tensor, the `sparse.regrow_fraction` of active indices whose deltas moved least
(smallest |delta|) are dropped, so those entries are exactly their pretrained values again, and as
many inactive entries with the largest accumulated gradient magnitude (the dense gradient summed
over the cycle's steps, SpIEL-AG) join with delta 0. The density never changes. `regrow: false`
keeps the first indices for the whole run. The result is saved as a sparse delta that composes with
others by addition.
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
    regrow: bool = Field(True, description="SpIEL's cycle: drop the deltas that moved least and regrow as many "
                                           "entries by accumulated gradient; false keeps the first indices")
    regrow_every: int = Field(20, ge=1, description="steps between two prune-and-regrow updates")
    regrow_fraction: float = Field(0.1, gt=0.0, le=1.0, description="share of each tensor's active indices "
                                                                    "dropped and regrown per update")


class SparseDelta(nn.Module):
    """The parametrization W0 -> W0 + scatter(indices, delta); W0 stays frozen. While `accumulated` is set,
    every backward pass adds the dense gradient dL/dW into it (the regrowth criterion)."""

    def __init__(self, indices: torch.Tensor, shape: tuple[int, ...]):
        super().__init__()
        self.shape = shape
        self.register_buffer("indices", indices)
        self.delta = nn.Parameter(torch.zeros(len(indices), device=indices.device))
        self.accumulated: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = weight.reshape(-1).index_add(0, self.indices, self.delta.to(weight.dtype)).view_as(weight)
        if self.accumulated is not None and out.requires_grad:
            out.register_hook(self._accumulate)
        return out

    def _accumulate(self, grad: torch.Tensor) -> None:
        self.accumulated += grad.detach().float()

    @torch.no_grad()
    def regrow(self, fraction: float) -> int:
        """Drop the `fraction` of active indices whose deltas are smallest in magnitude (their entries return
        to W0 exactly) and take as many inactive entries with the largest accumulated gradient, at delta 0."""
        count = min(round(fraction * len(self.indices)), self.accumulated.numel() - len(self.indices))
        if count <= 0:
            return 0
        dropped = torch.topk(self.delta.abs(), count, largest=False).indices
        score = self.accumulated.reshape(-1).abs()
        score[self.indices] = -1.0  # active (and just dropped) entries are not candidates
        self.indices[dropped] = torch.topk(score, count).indices
        self.delta[dropped] = 0.0
        self.accumulated.zero_()
        return count


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
        parametrize.register_parametrization(modules[name], "weight", SparseDelta(idx, tuple(modules[name].weight.shape)))


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
        for p in parametrized(model).values():  # dL/dW summed over each cycle: the regrowth criterion
            p.accumulated = torch.zeros(p.shape, device=p.indices.device) if self.sparse.regrow else None
        return model

    def on_step_start(self, model, step: int, max_steps: int) -> bool:
        """At every `regrow_every`-th step boundary: prune and regrow. The moved deltas' AdamW moments no
        longer belong to their entries, so the loop restarts the optimizer state."""
        if not self.sparse.regrow or step == 0 or step % self.sparse.regrow_every:
            return False
        return sum(p.regrow(self.sparse.regrow_fraction) for p in parametrized(model).values()) > 0

    def extra_state(self, model) -> dict:
        """The indices and, while regrowing, the gradient accumulated in this cycle (a weight-sized tensor each)."""
        return {name: {"indices": p.indices.cpu(), "accumulated": None if p.accumulated is None else p.accumulated.cpu()}
                for name, p in parametrized(model).items()}

    def load_extra_state(self, model, state: dict) -> None:
        for name, p in parametrized(model).items():
            p.indices.copy_(state[name]["indices"])
            if p.accumulated is not None and state[name]["accumulated"] is not None:
                p.accumulated.copy_(state[name]["accumulated"])

    def save_final(self, model, out) -> None:
        modules, deltas = dict(model.named_modules()), parametrized(model)
        delta = {f"{name}.weight": (p.indices, p.delta) for name, p in deltas.items()}
        shapes = {f"{name}.weight": list(modules[name].parametrizations.weight.original.shape) for name in deltas}
        save_delta(delta, shapes, out)
