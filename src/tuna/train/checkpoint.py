"""Atomic, exact checkpoints: trainable weights, optimizer, scheduler, RNG states and data position.

A checkpoint is written to a temporary directory and renamed into place, so `checkpoints/step-*`
only ever holds complete checkpoints and a crash mid-write leaves the last good one untouched.
A run of several processes writes the model and optimizer as DCP shards instead (`train.distributed`).
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuna.atomic import atomic_directory
from tuna.errors import UserError
from tuna.models.layers import named_state

WEIGHTS = "trainable.safetensors"
STATE = "state.pt"
META = "meta.json"
SHARDS = "shards"  # a multi-process checkpoint's model and optimizer (torch.distributed.checkpoint)


def fingerprint(model, names: list[str]) -> dict:
    """What a checkpoint must match: the architecture and the exact set of trained tensors."""
    config = model.config
    params = dict(model.named_parameters())
    shapes = sorted((n, tuple(params[n].shape)) for n in names)
    return {
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "trainable": hashlib.sha1(repr(shapes).encode()).hexdigest()[:16],
    }


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(directory: Path, step: int, model, names: list[str], state: dict, keep: int) -> Path:
    """Write checkpoint `step` (the tensors `names`, plus `state`) atomically, then prune to the newest `keep`."""
    target = directory / f"step-{step:07d}"
    with atomic_directory(target) as tmp:
        save_file({n: t.contiguous().cpu() for n, t in named_state(model, names).items()}, tmp / WEIGHTS)
        torch.save(state, tmp / STATE)
        (tmp / META).write_text(json.dumps({"step": step, "fingerprint": fingerprint(model, names)}, indent=1))
    prune(directory, keep)
    return target


def prune(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def is_sharded(path: Path) -> bool:
    return (path / SHARDS).is_dir()


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step-*") if (p / META).is_file())


def load(path: Path, model, names: list[str]) -> dict:
    """Load weights into `model` after checking it is the model the checkpoint was made for; return the state."""
    check_fingerprint(path, model, names)
    weights = load_file(path / WEIGHTS)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    return torch.load(path / STATE, weights_only=False)


def check_fingerprint(path: Path, model, names: list[str]) -> None:
    meta = json.loads((path / META).read_text())
    expected, actual = meta["fingerprint"], fingerprint(model, names)
    if expected != actual:
        diffs = ", ".join(f"{k}: checkpoint {expected.get(k)} vs model {actual.get(k)}"
                          for k in actual if expected.get(k) != actual[k])
        raise UserError(f"checkpoint {path} was made for a different model or method ({diffs})")
