"""The per-tensor merge rules, each as its paper (and mergekit, where it has the method) defines it.

A rule gets the base tensor (or None), the inputs' tensors, each input's parameters and the shared
ones, all resolved for this tensor, and returns the merged tensor in float32. Task-vector rules work
on τᵢ = θᵢ − θ_base; LiNeS (`lines_scale`) then scales the merged task vector by the tensor's depth.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Rule:
    name: str
    merge: Callable[..., Tensor]  # (base, tensors, per_model params, shared params, rng) -> merged
    needs_base: bool
    min_models: int = 1
    max_models: int | None = None
    defaults: dict = field(default_factory=dict)  # parameter -> default; a parameter absent here is refused
    per_model: tuple[str, ...] = ()  # parameters read from each input; the rest are shared
    task_vector: bool = False  # the result is base + a merged task vector, which LiNeS may scale


def linear(base, tensors, params, shared, rng) -> Tensor:
    """Model soup: Σ wᵢθᵢ, divided by Σ wᵢ when `normalize`."""
    weights = [p["weight"] for p in params]
    merged = tensors[0] * weights[0]
    for weight, tensor in zip(weights[1:], tensors[1:]):
        merged.add_(tensor, alpha=weight)  # in place: one output-sized buffer, however many inputs
    return merged.div_(sum(weights)) if shared["normalize"] else merged


def magnitude_trim(delta: Tensor, density: float, rng) -> Tensor:
    """TIES' trim: keep the `density` share of entries with the largest magnitude (at least one)."""
    if density >= 1:
        return delta
    keep = torch.zeros(delta.numel(), dtype=delta.dtype)
    keep[torch.argsort(delta.abs().reshape(-1), descending=True)[: max(1, int(density * delta.numel()))]] = 1
    return delta * keep.view_as(delta)


def random_drop(delta: Tensor, density: float, rng) -> Tensor:
    """DARE: drop each entry with probability 1 − density, rescale the survivors by 1/density."""
    if density >= 1:
        return delta
    keep = torch.rand(delta.shape, generator=rng) < density
    return delta * keep / density


def elected(deltas: Tensor) -> Tensor:
    """TIES' sign election: per entry, the sign of the summed (weighted) deltas; 1 where an input agrees."""
    majority = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0)
    return (deltas.sign() == majority).to(deltas.dtype)


def task_arithmetic_family(sparsify: Callable | None, elect: bool) -> Callable[..., Tensor]:
    """θ_base + λ·Σ wᵢ·sparsify(τᵢ) [over the entries agreeing with the elected sign] [/ Σ wᵢ]."""
    def merge(base, tensors, params, shared, rng) -> Tensor:
        deltas = torch.stack([sparsify(t - base, p["density"], rng) if sparsify else t - base
                              for t, p in zip(tensors, params)])
        weights = torch.tensor([p["weight"] for p in params], dtype=deltas.dtype).view(-1, *[1] * base.dim())
        deltas = deltas * weights
        if elect:
            mask = elected(deltas)
            mixed, divisor = (deltas * mask).sum(dim=0), (weights * mask).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed, divisor = deltas.sum(dim=0), weights.sum(dim=0)
            divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
        if shared["normalize"]:
            mixed = mixed / divisor
        return base + shared["lambda"] * mixed
    return merge


def slerp(base, tensors, params, shared, rng, threshold: float = 0.9995, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation from the base (t = 0) to the other model (t = 1), over the whole tensor;
    nearly parallel tensors interpolate linearly."""
    t, a, b = shared["t"], base, tensors[0]
    norm_a, norm_b = a.norm(), b.norm()
    norm_a = norm_a if norm_a > eps else torch.ones_like(norm_a)
    norm_b = norm_b if norm_b > eps else torch.ones_like(norm_b)
    dot = ((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1)
    if dot.abs() > threshold:
        return (1 - t) * a + t * b
    theta = torch.acos(dot)
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


def model_stock(base, tensors, params, shared, rng) -> Tensor:
    """Model Stock: t = k·cosθ / (1 + (k−1)·cosθ) from the fine-tunes' mean pairwise angle around the base
    (per tensor, or per output row under `filter_wise`); merged = t·mean(θᵢ) + (1 − t)·θ_base."""
    shape = base.shape
    rows = (lambda x: x.reshape(1, -1) if x.dim() == 1 else x) if shared["filter_wise"] else (lambda x: x.reshape(1, -1))
    w0, ws = rows(base), [rows(t) for t in tensors]
    offsets = [w - w0 for w in ws]
    cosines = [((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)).clamp(-1, 1)
               for i, a in enumerate(offsets) for b in offsets[i + 1:]]
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    t = stock_ratio(cos, len(ws))
    return (t * sum(ws) / len(ws) + (1 - t) * w0).reshape(shape)


def stock_ratio(cos: Tensor, k: int) -> Tensor:
    """Model Stock's interpolation ratio toward the fine-tunes' average (0 where the formula is singular)."""
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < 1e-6
    return torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, torch.ones_like(cos), denominator))


TASK = {"weight": 1.0, "density": 1.0, "lambda": 1.0}
RULES = {rule.name: rule for rule in [
    Rule("linear", linear, needs_base=False, defaults={"weight": 1.0, "normalize": True}, per_model=("weight",)),
    Rule("task_arithmetic", task_arithmetic_family(None, elect=False), needs_base=True,
         defaults={**TASK, "normalize": False}, per_model=("weight",), task_vector=True),
    Rule("ties", task_arithmetic_family(magnitude_trim, elect=True), needs_base=True,
         defaults={**TASK, "normalize": True}, per_model=("weight", "density"), task_vector=True),
    Rule("dare_linear", task_arithmetic_family(random_drop, elect=False), needs_base=True,
         defaults={**TASK, "normalize": False}, per_model=("weight", "density"), task_vector=True),
    Rule("dare_ties", task_arithmetic_family(random_drop, elect=True), needs_base=True,
         defaults={**TASK, "normalize": False}, per_model=("weight", "density"), task_vector=True),
    Rule("slerp", slerp, needs_base=True, max_models=1, defaults={"t": 0.5}),
    Rule("model_stock", model_stock, needs_base=True, min_models=2, defaults={"filter_wise": False},
         task_vector=True),
    Rule("lines", task_arithmetic_family(None, elect=False), needs_base=True,
         defaults={"weight": 1.0, "lambda": 1.0, "normalize": False, "alpha": 0.0, "beta": 1.0},
         per_model=("weight",), task_vector=True),
]}


def lines_scale(name: str, depth: float | None, alpha: float, beta: float) -> float:
    """LiNeS' λ for one tensor: α + β·(ℓ−1)/(L−1) for block ℓ of L (`depth` = (ℓ−1)/(L−1)); the
    embeddings count as the shallowest layer (α), the final norm and head as the deepest (α + β)."""
    if depth is None:
        depth = 0.0 if "embed" in name else 1.0
    return alpha + beta * depth


def tensor_rng(seed: int, name: str) -> torch.Generator:
    """One generator per tensor, so a tensor's random drops do not depend on the order tensors are read."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
