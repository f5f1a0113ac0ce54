"""The Method interface: which parameters train, and how the result is saved.

The training loop only calls these; it knows nothing about any particular method.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    paper: str
    knobs: str
    default_lr: float
    # (model, recipe, calibration) -> the model, with exactly the parameters that train requiring
    # grad. `calibration` (tuna.data.calibration) serves data-driven inits; it may be None in tests.
    prepare: Callable[..., nn.Module]
    save_final: Callable[[nn.Module, Path], None]
    # Before every optimizer step, with (model, recipe, step, max_steps): may change which prepared
    # parameters get gradients (HFT rounds) or re-initialise them (Chain of LoRA). Returns True when
    # trained values were reset, so the loop drops their optimizer state.
    on_step_start: Callable[[nn.Module, object, int, int], bool] | None = None
    # Per-parameter learning-rate multipliers by name (LoRA+); missing names use 1.
    lr_scales: Callable[[nn.Module, object], dict[str, float]] | None = None
    # What a checkpoint must hold besides the trainable tensors to resume exactly (sparse indices,
    # merged Chain-of-LoRA rounds), and how to put it back.
    extra_state: Callable[[nn.Module], dict] | None = None
    load_extra_state: Callable[[nn.Module, dict], None] | None = None
    # (recipe) -> True when the prepared model with its adapter disabled is exactly the starting model,
    # so objectives that compare with a reference need no second copy of it (LoRA with a default init).
    adapter_off_is_base: Callable[[object], bool] | None = None


def round_of(step: int, rounds: int, max_steps: int) -> int:
    """Which of `rounds` equal parts of the run `step` falls in (HFT, Chain of LoRA)."""
    return min(step * rounds // max(max_steps, 1), rounds - 1)


def save_full_model(model: nn.Module, out: Path) -> None:
    model.save_pretrained(out)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList as long as `config.num_hidden_layers`."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} decoder layers of {type(model).__name__}")


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def named_state(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].detach() for name in names}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
