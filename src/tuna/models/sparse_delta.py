"""Sparse deltas: per weight tensor, the flat indices of the entries that changed and by how much.

`sparse` and `s2ft` runs save their result this way (`final/sparse_delta.safetensors`). A delta is
applied to its base by index-add, so deltas from separate runs compose by addition (Composable
Sparse Fine-Tuning): apply one, then the other.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tuna import rundir
from tuna.errors import UserError

FILE = "sparse_delta.safetensors"
FORMAT = "tuna-sparse-delta"

Delta = dict[str, tuple[torch.Tensor, torch.Tensor]]  # weight name -> (flat indices, values)


def save_delta(delta: Delta, shapes: dict[str, list[int]], out: Path) -> None:
    tensors = {}
    for name, (indices, values) in delta.items():
        tensors[f"{name}.indices"] = indices.detach().to("cpu", torch.int64).contiguous()
        tensors[f"{name}.values"] = values.detach().to("cpu", torch.float32).contiguous()
    save_file(tensors, out / FILE, metadata={"format": FORMAT, "shapes": json.dumps(shapes)})


def delta_file(spec: str | Path) -> Path:
    """The delta file of a run directory, its final/ directory, or the file itself."""
    path = Path(spec)
    for candidate in (path, path / FILE, path / rundir.FINAL / FILE):
        if candidate.is_file() and candidate.name == FILE:
            return candidate
    raise UserError(f"{spec} is not a sparse delta: expected {FILE}, or a sparse/s2ft run directory holding one")


def read_delta(spec: str | Path) -> tuple[Delta, dict[str, list[int]]]:
    path = delta_file(spec)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise UserError(f"{path} is not a tuna sparse delta (format {meta.get('format')!r})")
        names = sorted({key.rsplit(".", 1)[0] for key in f.keys()})
        delta = {name: (f.get_tensor(f"{name}.indices"), f.get_tensor(f"{name}.values")) for name in names}
    return delta, json.loads(meta["shapes"])


@torch.no_grad()
def apply_delta(model, spec: str | Path) -> None:
    """Add the delta to the model's weights in place; refuse a delta made for another architecture."""
    delta, shapes = read_delta(spec)
    params = dict(model.named_parameters())
    for name, (indices, values) in delta.items():
        weight = params.get(name)
        if weight is None or list(weight.shape) != shapes[name]:
            found = "absent" if weight is None else f"shape {list(weight.shape)}"
            raise UserError(f"sparse delta {spec} does not fit this model: {name} has shape {shapes[name]} in the "
                            f"delta but is {found} in the model")
        weight.view(-1).index_add_(0, indices.to(weight.device), values.to(weight.device, weight.dtype))
