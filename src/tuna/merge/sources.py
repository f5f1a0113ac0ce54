"""Every kind of merge input, opened so that its tensors are read one at a time.

A source names its tensors (as a transformers checkpoint stores them), gives each tensor's shape, and
reads one tensor on demand. A checkpoint directory reads straight from its safetensors files; a LoRA
adapter or a sparse delta adds its change to its base's tensor as that tensor is read. An input that
cannot be read lazily (DoRA and other PEFT adapters, BitDelta, `.bin` checkpoints, adapter or delta
runs trained with `model.rope_scaling`) is loaded whole, merged, and held in memory; `lazy` says which.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from tuna import rundir
from tuna.errors import UserError
from tuna.models import bitdelta, sparse_delta
from tuna.models.load import load_any, load_tokenizer, resolve, run_model_config

LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
INDEX = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class Checkpoint:
    """A transformers checkpoint directory with safetensors weights, read one tensor at a time: each read
    maps its file only for that read, so no input stays resident."""
    lazy = True

    def __init__(self, spec: str, directory: Path):
        self.spec, self.directory = spec, directory
        if (directory / INDEX).is_file():
            files = sorted(set(json.loads((directory / INDEX).read_text())["weight_map"].values()))
        elif (directory / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError
        self._layout = {}  # key -> (file, shape, dtype)
        for name in files:
            with safe_open(str(directory / name), framework="pt") as f:
                for key in f.keys():
                    piece = f.get_slice(key)
                    if piece.get_dtype() not in SAFETENSORS_DTYPES:
                        raise UserError(f"{spec}: {key} is stored as {piece.get_dtype()}; tuna merges floating-point "
                                        "weights only (dequantise the model first)")
                    self._layout[key] = (name, tuple(piece.get_shape()), SAFETENSORS_DTYPES[piece.get_dtype()])

    def keys(self) -> list[str]:
        return list(self._layout)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._layout[key][1]

    def dtype(self, key: str) -> torch.dtype:
        return self._layout[key][2]

    def get(self, key: str) -> torch.Tensor:
        with safe_open(str(self.directory / self._layout[key][0]), framework="pt") as f:
            return f.get_tensor(key)

    def config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.directory)


class InMemory:
    """A model loaded whole (and any adapter merged into it): for inputs that cannot be read lazily."""
    lazy = False

    def __init__(self, spec: str, model, directory: Path):
        self.spec, self.directory = spec, directory
        self._config = model.config
        seen, self._tensors = set(), {}
        for key, tensor in model.state_dict().items():  # a tied head shares the embedding: stored once
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                self._tensors[key] = tensor.detach()

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype

    def config(self):
        return self._config


class WithChange:
    """A base source plus a change applied to each tensor as it is read (a LoRA product, a sparse delta)."""
    lazy = True

    def __init__(self, spec: str, base, directory: Path, change: dict):
        self.spec, self.base, self._change = spec, base, change
        self.directory = directory if has_tokenizer(directory) else base.directory

    def keys(self) -> list[str]:
        return self.base.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.base.dtype(key)

    def get(self, key: str) -> torch.Tensor:
        tensor = self.base.get(key)
        return tensor if key not in self._change else self._change[key](tensor.float()).to(tensor.dtype)

    def config(self):
        return self.base.config()


def lora_change(adapter: Path) -> dict | None:
    """{weight name: tensor -> tensor + scale·B·A} for a plain LoRA adapter; None for anything else (DoRA,
    modules_to_save, embedding LoRA, other PEFT types), which must be merged by PEFT itself."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    if (config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("modules_to_save")
            or config.get("fan_in_fan_out") or not (adapter / "adapter_model.safetensors").is_file()):
        return None
    parts: dict[str, dict] = {}
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            match = LORA_KEY.match(key)
            if match is None:
                return None
            parts.setdefault(match["module"], {})[match["part"]] = f.get_tensor(key).float()
    change = {}
    for module, ab in parts.items():
        short = module.split(".")[-1]
        rank = config.get("rank_pattern", {}).get(short, config["r"])
        alpha = config.get("alpha_pattern", {}).get(short, config["lora_alpha"])
        scale = alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
        change[f"{module}.weight"] = lambda w, a=ab["A"], b=ab["B"], s=scale: w + s * (b @ a)
    return change


def sparse_change(path: Path, base) -> dict:
    delta, shapes = sparse_delta.read_delta(path)
    change = {}
    for key, (indices, values) in delta.items():
        if key not in base.keys() or list(base.shape(key)) != shapes[key]:
            raise UserError(f"sparse delta {path} does not fit its base: {key} has shape {shapes[key]} in the delta")
        change[key] = lambda w, i=indices, v=values: w.reshape(-1).index_add(0, i, v).view_as(w)
    return change


def open_source(spec: str):
    """The source for a model spec (see the module docstring); a missing or unreadable model is one line."""
    if "+" in spec and not Path(spec).exists():  # mergekit's `base+adapter`
        base_spec, adapter = spec.split("+", 1)
        return with_adapter(spec, open_source(base_spec), Path(adapter))
    path = Path(spec).expanduser()
    if bitdelta.is_bitdelta(path):
        return InMemory(spec, load_any(spec)[0], path)
    model_cfg = run_model_config(path)
    if model_cfg is not None:
        final = path / rundir.FINAL
        if model_cfg.get("rope_scaling") and not (final / "config.json").is_file():
            model = load_any(spec)[0]  # its base's config changes too: loaded (and merged) whole
            return InMemory(spec, model.merge_and_unload() if hasattr(model, "merge_and_unload") else model, final)
        if (final / "adapter_config.json").is_file():
            return with_adapter(spec, open_source(model_cfg["name"]), final, run=spec)
        if (final / sparse_delta.FILE).is_file():
            base = open_source(model_cfg["name"])
            return WithChange(spec, base, final, sparse_change(final, base))
        return checkpoint(spec, final)
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise UserError(f"{path}/adapter_config.json does not name its base model (base_model_name_or_path)")
        return with_adapter(spec, open_source(base), path)
    resolved = Path(resolve(spec))
    return checkpoint(spec, resolved if resolved.is_dir() else hub_snapshot(spec))


def with_adapter(spec: str, base, adapter: Path, run: str | None = None):
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json)")
    change = lora_change(adapter)
    if change is not None:
        missing = sorted(set(change) - set(base.keys()))
        if missing:
            raise UserError(f"adapter {adapter} does not fit its base {base.spec}: {missing[0]} is not in the base")
        return WithChange(spec, base, adapter, change)
    if run is not None:
        model = load_any(run)[0]
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_any(base.spec)[0], str(adapter))
    return InMemory(spec, model.merge_and_unload(), adapter if has_tokenizer(adapter) else base.directory)


def checkpoint(spec: str, directory: Path):
    try:
        return Checkpoint(spec, directory)
    except FileNotFoundError:  # `.bin` or other weights transformers can read: loaded whole
        return InMemory(spec, load_any(str(directory))[0], directory)


def hub_snapshot(spec: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    return Path(try_to_load_from_cache(spec, "config.json")).parent


def has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer_config.json").is_file()


def tokenizer_of(source):
    return load_tokenizer(str(source.directory))
