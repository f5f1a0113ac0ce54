"""Cross-entropy without the full logits: the output head runs on a slice of positions at a time.

The usual loss materialises B×T×V logits (in float32 for the softmax): for a 128k vocabulary and
8k tokens that is 4 GiB, often more than the model. Here the decoder's last hidden states go through
the head `chunk_tokens` positions at a time; each slice's logits live only while its loss is
computed, and are recomputed in the backward pass (activation checkpointing per slice). The loss
and the gradients equal the plain loss up to float rounding; the price is one more head matmul.

Used by the SFT loss (and S3FT's) when `train.loss_chunk_tokens` is set. Models whose logits are more than `head(h)`
(Gemma's soft-capping, Cohere's logit scale) are refused rather than silently changed. On CUDA with
liger-kernel installed, its fused linear cross-entropy (Triton kernels, its own chunk size) replaces
the slices here: same per-token losses, with the head's gradient computed chunk by chunk in-kernel.
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tuna.errors import UserError
from tuna.models.forward import IGNORE, MODEL_INPUTS
from tuna.models.layers import unwrapped

LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def decoder_and_head(model):
    """The model's decoder stack and its output head, reached through any PEFT wrapper."""
    base = unwrapped(model)
    changed = [name for name in LOGIT_TRANSFORMS if getattr(base.config, name, None) not in (None, 1, 1.0)]
    if changed:
        raise UserError(f"train.loss_chunk_tokens: {type(base).__name__} transforms its logits ({changed[0]}); "
                        "unset train.loss_chunk_tokens for this model")
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise UserError(f"train.loss_chunk_tokens needs a plain linear output head, and the method made it a "
                        f"{type(head).__name__}; unset train.loss_chunk_tokens")
    return base.get_decoder(), head


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
    decoder, head = decoder_and_head(model)
    hidden = decoder(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    flat_hidden = hidden[:, :-1].reshape(-1, hidden.size(-1))
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
