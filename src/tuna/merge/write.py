"""The merged checkpoint on disk: sharded safetensors written as tensors arrive, and a model card."""
from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from tuna.errors import UserError

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "K": 10**3, "M": 10**6, "G": 10**9}


def shard_bytes(text: str) -> int:
    """`5GB`, `500MB`, `2000000`: the largest shard, in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if match is None:
        raise UserError(f"shard_size {text!r} is not a size like 5GB or 500MB")
    return int(float(match[1]) * UNITS[match[2]])


class ShardWriter:
    """Hold tensors until the next would overflow a shard, then write the shard; `close` names the shards
    as transformers expects (`model.safetensors`, or `model-0000i-of-0000n.safetensors` plus an index)."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes, self.shards = 0, []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size

    def flush(self) -> None:
        path = self.directory / f".shard-{len(self.shards)}.safetensors"
        save_file(self.pending, path, metadata={"format": "pt"})
        self.shards.append((path, list(self.pending), self.pending_bytes))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        if self.pending:
            self.flush()
        if len(self.shards) == 1:
            self.shards[0][0].rename(self.directory / "model.safetensors")
            return ["model.safetensors"]
        names, weight_map = [], {}
        for i, (path, keys, _) in enumerate(self.shards, start=1):
            name = f"model-{i:05d}-of-{len(self.shards):05d}.safetensors"
            path.rename(self.directory / name)
            names.append(name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": sum(size for *_, size in self.shards)}, "weight_map": weight_map}
        (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
        return names


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
