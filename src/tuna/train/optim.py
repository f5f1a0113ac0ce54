"""The optimizer and gradient clipping, shaped by the `optim.*` knobs and the method.

Per-parameter learning-rate multipliers come from two sources and multiply: the method's own
(LoRA+ gives B a larger rate) and layer-wise decay (BLURB / ELECTRA style: the top block gets
lr·d, each block below one more factor d, the embeddings d^(L+1), the final norm and head lr; a head
tied to the embeddings is the same tensor and gets their d^(L+1)).
Parameters with equal multipliers share a group, so the scheduler scales every group alike.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from tuna.errors import require_packages
from tuna.models.layers import decoder_layers
from tuna.train.offload import OffloadedAdamW


def layer_decay_scales(model, decay: float) -> dict[int, float]:
    """id(parameter) -> decay^(depth from the top), for every parameter of the model."""
    layers = decoder_layers(model)
    count = len(layers)
    depth = {id(p): count + 1 for p in model.get_input_embeddings().parameters()}
    for index, layer in enumerate(layers):
        depth.update({id(p): count - index for p in layer.parameters()})
    return {id(p): decay ** depth.get(id(p), 0) for p in model.parameters()}


def check_available(optim) -> None:
    """Refuse, before any slow work, an optimizer whose package is missing."""
    if optim.eight_bit:
        require_packages("optim.eight_bit needs", {"bitsandbytes": ("bitsandbytes", "bitsandbytes")}, "optim.eight_bit")


def optimizer_kind(optim) -> str:
    """What a checkpoint's optimizer state is: offloaded AdamW keeps AdamW's own state, 8-bit AdamW another."""
    return "adamw8bit" if optim.eight_bit else "adamw"


def optimizer_class(optim) -> type[torch.optim.Optimizer]:
    if optim.eight_bit:  # Dettmers et al. 2022: states quantised per block of 256 values, dynamic 8-bit code
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit
    return OffloadedAdamW if optim.offload else torch.optim.AdamW


def build_optimizer(model, recipe, method, lr: float) -> torch.optim.Optimizer:
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    scales = {id(p): 1.0 for _, p in named}
    by_name = method.lr_scales(model)
    scales = {id(p): scales[id(p)] * by_name.get(name, 1.0) for name, p in named}
    if recipe.optim.layer_decay:
        decay = layer_decay_scales(model, recipe.optim.layer_decay)
        scales = {key: value * decay[key] for key, value in scales.items()}
    groups: dict[float, list] = defaultdict(list)
    for _, p in named:
        groups[scales[id(p)]].append(p)
    # `lr_scale` stays in each group (and its state dict) so a reader can tell the base rate from a group's rate
    return optimizer_class(recipe.optim)([{"params": params, "lr": lr * scale, "lr_scale": scale} for scale, params in sorted(groups.items())],
                     lr=lr, weight_decay=recipe.train.weight_decay)


def clip_gradients(model, max_norm: float | None, per_component: bool) -> float:
    """Clip, and return the global gradient norm before clipping.

    Per component: each module's parameters (a weight and its bias) are clipped to `max_norm` on
    their own, so a component with large gradients cannot shrink the update of all the others.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.grad is not None]
    params = [p for _, p in named]
    if not per_component:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf")))
    total = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    if max_norm is None:
        return total
    components: dict[str, list] = defaultdict(list)
    for name, p in named:
        components[name.rsplit(".", 1)[0]].append(p)
    for members in components.values():
        torch.nn.utils.clip_grad_norm_(members, max_norm)
    return total
