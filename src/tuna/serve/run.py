"""Start a server: the transformers engine here (works everywhere), or vLLM's own server on CUDA."""
from __future__ import annotations

import sys
from pathlib import Path

from tuna.errors import UserError


def served_name(spec: str) -> str:
    """The `model` id clients use for the base: an alias or hub id as given, a path by its last part."""
    path = Path(spec).expanduser()
    return path.stem if path.suffix == ".gguf" else (path.name if path.exists() else spec)


def parse_adapters(pairs: list[str], base_name: str) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for pair in pairs:
        name, sep, run = pair.partition("=")
        if not sep or not name.strip() or not run.strip():
            raise UserError(f"--adapter {pair!r}: expected NAME=RUN")
        if name in adapters or name == base_name:
            raise UserError(f"--adapter {name}: the name is taken (each adapter and the base need their own)")
        adapters[name.strip()] = run.strip()
    return adapters


def build(spec: str, adapters: dict[str, str], *, name: str, max_batch: int):
    """(app, batcher) for the transformers engine; the batcher is started."""
    from tuna.serve.api import build_app
    from tuna.serve.batcher import Batcher
    from tuna.serve.load import load_served

    model, tokenizer = load_served(spec, adapters)
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    batcher = Batcher(model, tokenizer, max_batch=max_batch, adapters=bool(adapters)).start()
    return build_app(batcher, tokenizer, name, list(adapters), context), batcher


def serve(spec: str, pairs: list[str], *, host: str, port: int, max_batch: int, name: str | None) -> None:
    missing = [m for m in ("fastapi", "uvicorn", "sse_starlette") if not importable(m)]
    if missing:
        raise UserError(f"tuna serve needs {', '.join(missing)}: pip install 'tuna[serve]'")
    import uvicorn

    name = name or served_name(spec)
    adapters = parse_adapters(pairs, name)
    check_port(host, port)  # before the model loads, not after
    app, batcher = build(spec, adapters, name=name, max_batch=max_batch)
    print(f"serving {name}" + (f" with adapters {', '.join(adapters)}" if adapters else "") +
          f" at http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)", file=sys.stderr)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        batcher.close()


def check_port(host: str, port: int) -> None:
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or --host") from None


def importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
