"""Atomic, verified, safe checkpoints: trainable weights, optimizer, scheduler, RNG states and data position.

A checkpoint is written to a temporary directory and renamed into place, so `checkpoints/step-*`
only ever holds complete checkpoints and a crash mid-write leaves the last good one untouched.
A run of several processes writes the model and optimizer as DCP shards instead (`train.distributed`).

A method that saves a PEFT adapter also puts one in every checkpoint (`adapter/`, written by the
loop through `extra`), so any checkpoint loads with plain `PeftModel.from_pretrained`; resuming
reads only the files below.

The last file written is `manifest.json`: the size and sha256 of every other file. A checkpoint is
used only when its files match it, so a truncated, emptied or silently altered file is caught and
the next older checkpoint is used instead (`newest_good`). State files are read with
`torch.load(weights_only=True)`: tensors and plain Python values only, so a run directory from
someone else can never execute code (NumPy's RNG state is stored as a tensor for that reason).
"""
from __future__ import annotations

import errno
import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuna.atomic import atomic_directory
from tuna.data.fingerprint import file_digest
from tuna.errors import UserError
from tuna.models.layers import named_state

WEIGHTS = "trainable.safetensors"
STATE = "state.pt"
META = "meta.json"
MANIFEST = "manifest.json"
SHARDS = "shards"  # a multi-process checkpoint's model and optimizer (torch.distributed.checkpoint)
ADAPTER = "adapter"  # the adapter in PEFT's format, for methods that save one


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
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)  # no pickled arrays
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(directory: Path, step: int, model, names: list[str], state: dict, keep: int,
         extra: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint `step` (the tensors `names`, plus `state`, plus what `extra` writes into the directory)
    atomically, then prune to the newest `keep`."""
    target = directory / f"step-{step:07d}"
    with atomic_directory(target) as tmp:
        save_file({n: t.contiguous().cpu() for n, t in named_state(model, names).items()}, tmp / WEIGHTS)
        torch.save(state, tmp / STATE)
        (tmp / META).write_text(json.dumps({"step": step, "fingerprint": fingerprint(model, names)}, indent=1))
        if extra is not None:
            extra(tmp)
        write_manifest(tmp)
    prune(directory, keep)
    return target


def write_manifest(directory: Path) -> None:
    """The size and sha256 of every file in a checkpoint directory; written last, so it vouches for the rest."""
    files = {str(f.relative_to(directory)): {"size": f.stat().st_size, "sha256": file_digest(f)}
             for f in sorted(directory.rglob("*")) if f.is_file() and f.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps(files, indent=1))


def damage(path: Path) -> str | None:
    """Why checkpoint `path` cannot be trusted (a file missing, cut short or altered), or None when it is whole."""
    try:
        files = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "it has no manifest (cut short, or written by a tuna before checksums)"
    except ValueError:
        return "its manifest is damaged"
    for name, entry in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != entry["size"]:
            return f"{name} holds {f.stat().st_size} bytes, not {entry['size']}"
        if file_digest(f) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def good_checkpoints(directory: Path, say=None) -> list[Path]:
    """The checkpoints whose files match their manifest, oldest first; `say` hears of each one skipped."""
    good = []
    for path in checkpoints(directory):
        reason = damage(path)
        if reason is None:
            good.append(path)
        elif say is not None:
            say(f"checkpoint {path.name} is skipped: {reason}")
    return good


def load_state(path: Path) -> dict:
    """A checkpoint's `state.pt`, as tensors and plain values only: nothing in it can run code."""
    try:
        return torch.load(path / STATE, weights_only=True)
    except Exception as exc:  # UnpicklingError for any object outside the allow-list; others for damage
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(f"{STATE} cannot be read as plain data ({reason[:200]})") from None


def disk_full(exc: BaseException, directory: Path | None = None, needed: int = 0) -> bool:
    """Whether a failed write ran out of space: ENOSPC itself, torch's and safetensors' wrappings of it, or
    (torch's writer often says only "unexpected pos") less room left in `directory` than the write `needed`."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if any(sign in str(exc) for sign in ("No space left", "os error 28", "file write failed")):
            return True
        exc = exc.__cause__ or exc.__context__
    return directory is not None and needed > 0 and shutil.disk_usage(directory).free < needed


def size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class UnsafeCheckpoint(Exception):
    """A checkpoint file that is not plain data (or not readable): the next older checkpoint is tried."""


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
    state = load_state(path)  # before any weight is copied: a refused checkpoint leaves the model alone
    weights = load_file(path / WEIGHTS)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    return state


def check_fingerprint(path: Path, model, names: list[str]) -> None:
    meta = json.loads((path / META).read_text())
    expected, actual = meta["fingerprint"], fingerprint(model, names)
    if expected != actual:
        diffs = ", ".join(f"{k}: checkpoint {expected.get(k)} vs model {actual.get(k)}"
                          for k in actual if expected.get(k) != actual[k])
        raise UserError(f"checkpoint {path} was made for a different model or method ({diffs})")
