"""The starting model's answer log-probs, computed once before training and cached in the run directory.

DPO needs from its reference only one number per sequence: the answer's summed log-prob under the
starting model. When switching an adapter off does not give that model back (full fine-tuning,
freeze, PiSSA, ...), keeping a frozen copy alive would cost a whole model of memory and a forward
pass per micro-batch. Instead the loop calls `attach_reference_logps` with the model as loaded,
before any method touches it: every pair of both splits gets its (chosen, rejected) numbers, and the
model goes on to be trained with no copy made.

The numbers are saved to `reference_logps.safetensors` in the run directory, one (chosen, rejected)
row per pair keyed by the pair's index in its split, with a fingerprint of the model's weights, the
precision and the rendered pairs. A resumed run reads them back instead of recomputing; a file whose
fingerprint does not match (other data or model) is recomputed and replaced.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from array import array
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tuna.data.preference import eval_pair_batches
from tuna.data.preference import Pair
from tuna.models.forward import answer_logps, evaluating, model_logits

CACHE = "reference_logps.safetensors"


def fingerprint(model, splits: dict[str, list[Pair]], precision: str) -> str:
    """What the cached numbers depend on: every weight (by a checksum), the precision and every rendered pair."""
    digest = hashlib.sha256(f"{model.config.to_json_string()}|{precision}".encode())
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            digest.update(f"{name}{tuple(tensor.shape)}{float(tensor.double().sum())}".encode())
    for split, pairs in splits.items():
        digest.update(f"|{split}:{len(pairs)}".encode())
        for pair in pairs:
            for item in (pair.chosen, pair.rejected):
                digest.update(array("q", item.input_ids).tobytes() + array("q", item.labels).tobytes())
    return digest.hexdigest()


def compute(model, pairs: list[Pair], *, batch_size: int, pad_id: int, device: torch.device,
            autocast=contextlib.nullcontext) -> torch.Tensor:
    """(len(pairs), 2): each pair's summed (chosen, rejected) answer log-probs under `model`."""
    values = torch.zeros(len(pairs), 2)
    with evaluating(model):
        for indices, batch in eval_pair_batches(pairs, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                logps, _ = answer_logps(model_logits(model, batch), batch["labels"])
            values[indices] = torch.stack(logps.float().cpu().chunk(2), dim=1)
    return values


def attach_reference_logps(model, splits: dict[str, list[Pair]], run_dir: Path, *, precision: str, say=print,
                           **compute_options) -> None:
    """Give every pair its `reference_logps`, from the run directory's cache when it matches, else computed."""
    path = Path(run_dir) / CACHE
    splits = {name: pairs for name, pairs in splits.items() if pairs}
    key = fingerprint(model, splits, precision)
    tables = read_cache(path, key)
    if tables is None:
        started = time.perf_counter()
        tables = {name: compute(model, pairs, **compute_options) for name, pairs in splits.items()}
        write_cache(path, tables, key)
        say(f"reference log-probs of {sum(map(len, splits.values()))} pairs computed in "
            f"{time.perf_counter() - started:.0f}s and cached in {path}")
    else:
        say(f"reference log-probs read from {path}")
    for name, pairs in splits.items():
        for pair, (chosen, rejected) in zip(pairs, tables[name].tolist()):
            pair.reference_logps = (chosen, rejected)


def read_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The cached tables, or None when there is no cache or it was made for other data or another model."""
    if not path.is_file():
        return None
    with safe_open(path, framework="pt") as cache:
        if (cache.metadata() or {}).get("fingerprint") != key:
            return None
        return {name: cache.get_tensor(name) for name in cache.keys()}


def write_cache(path: Path, tables: dict[str, torch.Tensor], key: str) -> None:
    partial = path.with_name(path.name + ".partial")
    save_file({name: t.contiguous() for name, t in tables.items()}, partial, metadata={"fingerprint": key})
    os.replace(partial, path)  # a crash mid-write never leaves a truncated cache behind
