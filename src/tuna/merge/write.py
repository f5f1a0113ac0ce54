"""The merged checkpoint on disk: sharded safetensors written as tensors arrive, and a model card."""
from __future__ import annotations

import json
import math
import re
import struct
from datetime import date
from pathlib import Path

import torch
import yaml

from tuna.errors import UserError

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "K": 10**3, "M": 10**6, "G": 10**9}


def shard_bytes(text: str) -> int:
    """`5GB`, `500MB`, `2000000`: the largest shard, in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if match is None:
        raise UserError(f"shard_size {text!r} is not a size like 5GB or 500MB")
    return int(float(match[1]) * UNITS[match[2]])


SAFETENSORS_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


class StreamingShards:
    """Safetensors shards written one tensor at a time, so the output never sits whole in memory.

    The safetensors library writes a file from a dict of tensors it holds all at once. Every tensor's
    name, shape and dtype is known before the merge starts, so each shard's header (its tensors' byte
    offsets) is written first and the tensors' bytes are appended as they are merged: the format's own
    layout (8-byte header length, JSON header padded to 8 bytes, then the data), read back by
    safetensors in the tests. Files are named as transformers expects: `model.safetensors`, or
    `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`.
    """

    def __init__(self, directory: Path, layout: list[tuple[str, tuple[int, ...], torch.dtype]], max_bytes: int):
        shards: list[list] = [[]]
        used = 0
        for key, shape, dtype in layout:
            size = math.prod(shape) * dtype.itemsize
            if shards[-1] and used + size > max_bytes:
                shards.append([])
                used = 0
            shards[-1].append((key, shape, dtype, size))
            used += size
        names = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
        self.directory, self.expected = directory, []  # (file name, key, shape, dtype) in write order
        for name, shard in zip(names, shards):
            self.expected += [(name, key, shape, dtype) for key, shape, dtype, _ in shard]
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(e[3] for shard in shards for e in shard)},
                     "weight_map": {key: name for name, key, _, _ in self.expected}}
            (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
        self.headers = {name: header(shard) for name, shard in zip(names, shards)}
        self.file, self.position = None, 0

    def __enter__(self) -> StreamingShards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Append the next tensor of the layout, cast to its output dtype."""
        name, expected_key, shape, dtype = self.expected[self.position]
        if key != expected_key or tuple(tensor.shape) != shape:
            raise RuntimeError(f"merge wrote {key} {tuple(tensor.shape)} where the layout has {expected_key} {shape}")
        tensor = tensor.to(dtype)
        if self.file is None or self.file.name != str(self.directory / name):
            self.close()
            self.file = (self.directory / name).open("wb")
            self.file.write(self.headers[name])
        self.file.write(tensor.contiguous().view(torch.uint8).numpy().data)  # the tensor's memory, not a copy
        self.position += 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def header(shard: list) -> bytes:
    """A safetensors header: JSON of each tensor's dtype, shape and byte range, padded to 8 bytes."""
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape, dtype, size in shard:
        entries[key] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def model_card(recipe: dict, inputs: list[str], version: str, *, adapter: bool = False) -> str:
    """README.md for the output, as mergekit writes one: what was merged, how, and by which tool."""
    kind = "a LoRA adapter combined from the adapters below" if adapter else "a merge of the models below"
    rows = "\n".join(f"- `{spec}`" for spec in inputs)
    front = {"library_name": "peft" if adapter else "transformers", "tags": ["tuna", "merge"]}
    if recipe.get("base_model"):
        front["base_model"] = recipe["base_model"]
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n# Merged model\n\n"
            f"This is {kind}, made with tuna {version} (`tuna merge`) on {date.today().isoformat()} "
            f"by the `{recipe['merge_method']}` method.\n\n## Inputs\n{rows}\n\n## Recipe\n```yaml\n"
            f"{yaml.safe_dump(recipe, sort_keys=False)}```\n")
