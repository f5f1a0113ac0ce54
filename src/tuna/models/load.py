"""Resolve a model spec and load it with its tokenizer.

A spec is one of: an alias (`smollm2-135m`), a local Hugging Face checkpoint directory, a `.gguf`
file, a hub id already in the local Hugging Face cache (never downloaded), a PEFT adapter directory
from any tool (its base as its `adapter_config.json` names it, resolved as a spec), or a tuna run
directory (its base model plus the trained adapter, sparse delta or weights). The embedded model's
hub id stands for the embedded model when the real one is not in the Hugging Face cache: tuna's
adapters name their base by hub id (`models.hub`), so a `final/` of its own loads on its own too.
A run trained with `model.rope_scaling` gets that scaling on its base before the adapter or delta
goes on, so it generates with the context window it was trained for; full-weight runs saved it in
their config.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

from tuna import rundir
from tuna.errors import UserError, first_line
from tuna.models import bitdelta, sparse_delta
from tuna.models.gguf_cache import EMBEDDED_FILE, cached_checkpoint, embedded_gguf
from tuna.models.rope import RopeScaling, apply_rope_scaling

ALIASES = {"smollm2-135m": "smollm2-135m-instruct"}  # alias -> the directory of its cached checkpoint
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # alias -> the Hub model it is a GGUF of


def resolve(spec: str) -> str:
    """A directory or cached hub id that `from_pretrained` can open offline."""
    if spec in ALIASES:
        return embedded(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {path}")
        return str(cached_checkpoint(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model directory (no config.json)")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise UserError(f"model not found: {spec!r}. Use an alias ({', '.join(ALIASES)}), a checkpoint directory, a .gguf file or a cached hub id")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return spec
    alias = next((a for a, hub in HUB_IDS.items() if hub == spec), None)
    if alias is not None:  # what tuna's own adapters of the embedded model name as their base
        print(f"tuna: {spec} is not in the Hugging Face cache; using the embedded {alias} ({EMBEDDED_FILE})",
              file=sys.stderr)
        return embedded(alias)
    raise UserError(f"hub model {spec!r} is not in the local Hugging Face cache, and tuna never downloads at run time")


def embedded(alias: str) -> str:
    return str(cached_checkpoint(embedded_gguf(), ALIASES[alias]))


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    with unloadable(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    with unloadable(source, "model"):
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)


@contextlib.contextmanager
def unloadable(source: str, what: str):
    """A checkpoint that cannot be read (a broken config.json, missing or garbage weights) is one line."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        reason = first_line(exc)
        raise UserError(f"cannot load the {what} in {source}: {reason[:300]}") from None


def load_base(spec: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a base model spec."""
    source = resolve(spec)
    return load_model(source, dtype), load_tokenizer(source)


def run_model_config(spec: str | Path) -> dict | None:
    """The `model` section a run directory was trained with (its base's name, its rope scaling); None for
    anything that is not a run directory."""
    path = Path(spec).expanduser()
    if not rundir.is_run_dir(path):
        return None
    import yaml

    return yaml.safe_load((path / rundir.CONFIG).read_text())["model"]


def base_model_of(spec: str) -> str | None:
    """The base model a run directory was trained from; None for anything else."""
    model_cfg = run_model_config(spec)
    return model_cfg["name"] if model_cfg else None


def load_any(spec: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a base model spec, a finished run directory or a BitDelta directory."""
    path = Path(spec).expanduser()
    if bitdelta.is_bitdelta(path):
        base, signs, scales, exact = bitdelta.load(path)
        model, _ = load_any(base, dtype)
        bitdelta.apply(model, signs, scales, exact)
        return model, load_tokenizer(str(path))
    model_cfg = run_model_config(path)
    if model_cfg is None:
        if (path / "adapter_config.json").is_file():
            return load_adapter(path, dtype)
        return load_base(spec, dtype)
    rope_scaling = RopeScaling(**model_cfg["rope_scaling"]) if model_cfg.get("rope_scaling") else None
    final = path / rundir.FINAL
    if (final / "adapter_config.json").is_file():
        from peft import PeftModel

        model, tokenizer = load_base(model_cfg["name"], dtype)
        apply_rope_scaling(model, rope_scaling)
        return PeftModel.from_pretrained(model, final), tokenizer
    if (final / sparse_delta.FILE).is_file():
        model, _ = load_base(model_cfg["name"], dtype)
        apply_rope_scaling(model, rope_scaling)
        sparse_delta.apply_delta(model, final)
        return model, load_tokenizer(str(final))
    return load_model(str(final), dtype), load_tokenizer(str(final))


def load_adapter(path: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a PEFT adapter directory written by any tool: its base, as `adapter_config.json`
    names it, with the adapter on; the adapter's tokenizer when it saved one, else the base's."""
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{path}/adapter_config.json does not name its base model (base_model_name_or_path)")
    try:
        source = resolve(base)
    except UserError as exc:
        raise UserError(f"the adapter {path} is for the base model {base!r}, which tuna cannot open: {exc}") from None
    from peft import PeftModel

    model = load_model(source, dtype)
    with unloadable(str(path), "adapter"):
        model = PeftModel.from_pretrained(model, path)
    return model, load_tokenizer(str(path) if (path / "tokenizer_config.json").is_file() else source)
