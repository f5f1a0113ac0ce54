"""Finding things inside a model: its decoder blocks, the model under a PEFT wrapper, what trains."""
from __future__ import annotations

import torch
from torch import nn

from tuna.errors import UserError


def unwrapped(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (adapters are injected in place, so they still act)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList as long as `config.num_hidden_layers`."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"cannot find the {count} decoder layers of {type(unwrapped(model)).__name__}: tuna's "
                    "layer-wise features need one stack of transformer blocks")


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
