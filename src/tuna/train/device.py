"""Pick the device and the autocast precision, refusing requests the machine cannot meet."""
from __future__ import annotations

import contextlib

import torch

from tuna.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UserError(f"train.device is {name!r} but no CUDA device is available (torch {torch.__version__}, {build}); use device: cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"train.device is {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device is 'mps' but MPS is not available on this machine")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError("train.precision fp16 needs a CUDA device (it relies on loss scaling); use bf16 or fp32 on the CPU")
    return name


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


@contextlib.contextmanager
def explain_out_of_memory(recipe, step: int, *, last_checkpoint):
    """An out-of-memory error in a training step becomes advice: the knobs that lower memory, and
    the checkpoint to resume from. `last_checkpoint()` lists the run's checkpoints."""
    try:
        yield
    except torch.OutOfMemoryError:
        good = last_checkpoint()
        where = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint had been written yet"
        cfg = recipe.train
        raise UserError(
            f"out of memory at step {step} (micro-batch of {cfg.micro_batch_size}, up to {recipe.data.max_tokens} "
            f"tokens each). To fit: lower train.micro_batch_size and raise train.grad_accum to keep the batch; "
            f"set train.gradient_checkpointing: true; set train.loss_chunk_tokens (e.g. 1024); lower data.max_tokens "
            f"(the row length with data.batching: packed); shrink the optimizer (optim.eight_bit, or optim.offload to "
            f"CPU memory); or train fewer parameters (method: lora). {where}; "
            f"resume with `tuna train --resume {recipe.output_dir}` after changing them") from None


def saved_tensors(offload: bool, device: torch.device):
    """Where autograd keeps what the backward pass needs: on the device, or (`train.offload_activations`)
    in CPU memory, pinned when the device is CUDA so the copies run asynchronously."""
    if not offload:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")
