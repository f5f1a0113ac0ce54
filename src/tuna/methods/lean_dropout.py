"""LoRA's dropout without its copies: the same masks and the same arithmetic, a fifth of the memory.

PEFT computes `B(A(dropout(x)))`. On the CPU, torch's dropout keeps its float32 mask for the backward
pass, and `A` keeps `dropout(x)`: two copies of the layer's input per adapted layer, 8 bytes per
element, where q, k and v (and gate and up) each make their own though they read the same `x`. On the
embedded model that is half of everything a LoRA step keeps for its backward pass.

`DroppedInputLinear` replaces `A` (same weight, same state-dict key) and takes over the dropout: it keeps
`x` itself, which the layers that read the same input share, and the mask as booleans (1 byte), and
rebuilds `dropout(x)` in the backward pass. The mask is drawn as torch's CPU dropout draws it (a
Bernoulli sample of `x`'s shape, scaled by 1/(1-p)), so the forward values, the gradients and the
random stream are those of PEFT's module. DoRA's layers are left alone: its magnitude step reads the
dropped input itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _DropoutLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float):
        noise = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)  # torch's CPU dropout: the same draw and scale
        ctx.p = p
        ctx.save_for_backward(x, noise != 0, weight)
        return F.linear(x * noise, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, kept, weight = ctx.saved_tensors
        noise = kept.to(x.dtype).div_(1 - ctx.p)
        grad = grad.to(weight.dtype)
        grad_x = (grad @ weight).to(x.dtype) * noise if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = grad.flatten(0, -2).T @ (x * noise).to(weight.dtype).flatten(0, -2)
        return grad_x, grad_weight, None


class DroppedInputLinear(torch.nn.Linear):
    """LoRA's `A` (bias-free, as PEFT makes it) with its dropout folded in; in eval mode a plain linear layer."""

    def __init__(self, linear: torch.nn.Linear, p: float):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features, self.p = linear.in_features, linear.out_features, p
        self.weight, self.bias = linear.weight, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return _DropoutLinear.apply(x, self.weight, self.p)
        return super().forward(F.dropout(x, self.p, self.training))


def fold_lora_dropout(model) -> int:
    """Fold each plain LoRA layer's dropout into its `A` (see the module docstring); returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    folded = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        for name, dropout in list(module.lora_dropout.items()):
            plain = name not in module.lora_variant and module.lora_A[name].bias is None
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0 and plain:
                module.lora_A[name] = DroppedInputLinear(module.lora_A[name], dropout.p)
                module.lora_dropout[name] = torch.nn.Identity()
                folded += 1
    return folded
