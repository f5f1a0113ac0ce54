"""Cross-entropy without the full logits: the output head runs on a slice of positions at a time.

The usual loss materialises B×T×V logits (in float32 for the softmax): for a 128k vocabulary and
8k tokens that is 4 GiB, often more than the model. Here the decoder's last hidden states go through
the head `chunk_tokens` positions at a time; each slice's logits live only while its loss is
computed, and are recomputed in the backward pass (activation checkpointing per slice). The loss
and the gradients equal the plain loss up to float rounding; the price is one more head matmul.

Used by the SFT loss (and S3FT's) when `train.loss_chunk_tokens` is set. Models whose logits are more
than `head(h)` (Gemma's soft-capping, Cohere's logit scale) are refused rather than silently changed.
On CUDA with liger-kernel installed, its fused linear cross-entropy (Triton kernels, its own chunk size)
replaces the slices here: same per-token losses, with the head's gradient computed chunk by chunk in-kernel.

When the head is frozen (LoRA and the other adapters), `frozen_head_token_losses` goes further and is the
default: a token's loss depends on its own hidden state alone, so its gradient with respect to that
state, `(softmax − onehot(target)) @ W`, is computed in the forward pass, slice by slice, and kept
(tokens × hidden, a few MB). The backward pass only scales it by each token's incoming gradient: no
logits kept, none recomputed, and no matmul more than the plain loss does. Where the head trains, or the
model transforms its logits, the plain loss runs instead.
"""
from __future__ import annotations

import importlib.util
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tuna.errors import UserError
from tuna.models.forward import IGNORE, MODEL_INPUTS, token_losses
from tuna.models.layers import unwrapped

LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def logit_transform(model) -> str | None:
    """The config key by which the model's logits are more than `head(h)`, if any."""
    config = unwrapped(model).config
    return next((name for name in LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1, 1.0)), None)


def decoder_and_head(model):
    """The model's decoder stack and its output head, reached through any PEFT wrapper."""
    base = unwrapped(model)
    changed = logit_transform(model)
    if changed:
        raise UserError(f"train.loss_chunk_tokens: {type(base).__name__} transforms its logits ({changed}); "
                        "unset train.loss_chunk_tokens for this model")
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise UserError(f"train.loss_chunk_tokens needs a plain linear output head, and the method made it a "
                        f"{type(head).__name__}; unset train.loss_chunk_tokens")
    return base.get_decoder(), head


def head_and_flat_hidden(model, batch: dict) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """The output head, the decoder's last hidden states of the scored positions as (N, H), and the (B, T-1)
    targets they predict."""
    decoder, head = decoder_and_head(model)
    hidden = decoder(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).last_hidden_state
    return head, hidden[:, :-1].reshape(-1, hidden.size(-1)), batch["labels"][:, 1:]


def _slice_losses(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")


def fused_kernel(device: torch.device):
    """liger-kernel's fused linear cross-entropy where it can run (CUDA, package installed), else None."""
    if device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return None
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy


def chunked_token_losses(model, batch: dict, chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As `models.forward.token_losses`: (B, T-1) per-position losses (0 where ignored) and the mask that counts."""
    head, flat_hidden, targets = head_and_flat_hidden(model, batch)
    flat_targets = targets.reshape(-1)
    fused = fused_kernel(flat_hidden.device)
    if fused is not None:
        losses = fused(flat_hidden, head.weight, flat_targets, head.bias, ignore_index=IGNORE, reduction="none")
        return losses.float().view_as(targets), targets != IGNORE
    keep = torch.is_grad_enabled()
    pieces = []
    for start in range(0, flat_targets.numel(), chunk_tokens):
        part = slice(start, start + chunk_tokens)
        if keep:
            pieces.append(checkpoint(_slice_losses, flat_hidden[part], head.weight, head.bias, flat_targets[part],
                                     use_reentrant=False))
        else:
            pieces.append(_slice_losses(flat_hidden[part], head.weight, head.bias, flat_targets[part]))
    return torch.cat(pieces).view_as(targets), targets != IGNORE


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of `hidden @ weight.T (+ bias)` against `targets`, for a head that does not train."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor, chunk_tokens: int):
        losses = torch.zeros(targets.numel(), dtype=torch.float32, device=hidden.device)
        state_grads = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, targets.numel(), chunk_tokens):
            part = slice(start, start + chunk_tokens)
            logits = F.linear(hidden[part], weight, bias).float()
            scored = targets[part] != IGNORE
            picked = targets[part].clamp(min=0)
            log_norm = torch.logsumexp(logits, dim=-1)
            losses[part] = (log_norm - logits.gather(1, picked[:, None]).squeeze(1)) * scored
            if state_grads is not None:
                probs = logits.sub_(log_norm[:, None]).exp_()  # the slice's logits become its softmax, in place
                probs[torch.arange(len(picked), device=probs.device), picked] -= 1
                probs *= scored[:, None]
                state_grads[part] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(state_grads)
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        (state_grads,) = ctx.saved_tensors
        grad_hidden = None if state_grads is None else state_grads * grad_losses[:, None].to(state_grads.dtype)
        return grad_hidden, None, None, None, None


def head_frozen(model) -> bool:
    """Whether the output head is a plain linear layer that takes no gradient and whose logits are used as they
    are, so `frozen_head_token_losses` can serve."""
    head = unwrapped(model).get_output_embeddings()
    return (type(head) is torch.nn.Linear and not any(p.requires_grad for p in head.parameters())
            and logit_transform(model) is None)


def choose_token_losses(chunk_tokens: int | None, head_apart: bool):
    """The per-token losses an objective reads: slices of `chunk_tokens` when set; else, where the objective and
    the method let the decoder and the head run apart (`head_apart`), the frozen-head path while the head
    is frozen; else the plain logits."""
    if chunk_tokens:
        return partial(chunked_token_losses, chunk_tokens=chunk_tokens)
    if head_apart:
        return frozen_head_or_plain_losses
    return token_losses


def frozen_head_or_plain_losses(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen-head path while the head is frozen, the plain one whenever it trains: asked at every call,
    as some methods (HFT's rounds) change what trains as they go."""
    return (frozen_head_token_losses if head_frozen(model) else token_losses)(model, batch)


def frozen_head_token_losses(model, batch: dict, chunk_tokens: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """As `models.forward.token_losses`, for a frozen head: the decoder, then `_FrozenHeadCrossEntropy`."""
    head, flat_hidden, targets = head_and_flat_hidden(model, batch)
    losses = _FrozenHeadCrossEntropy.apply(flat_hidden, head.weight, head.bias, targets.reshape(-1), chunk_tokens)
    return losses.view_as(targets), targets != IGNORE
