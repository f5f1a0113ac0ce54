"""`tuna serve --engine vllm`: vLLM's own OpenAI server over the same base and adapters, for CUDA scale.

tuna only translates its arguments (a base spec to a checkpoint directory, a run to its adapter
directory) and runs vLLM's command; batching, paging and multi-LoRA are vLLM's.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tuna.errors import UserError
from tuna.models.load import resolve, run_model_config


def vllm_command(spec: str, adapters: dict[str, str], *, host: str, port: int, name: str, max_batch: int) -> list[str]:
    from tuna.serve.load import adapter_dir, check_adapter

    if run_model_config(spec):
        raise UserError(f"{spec} is a run: vLLM serves checkpoints; export it first (tuna export {spec} --merge DIR) "
                        "or serve its base with --adapter")
    source = resolve(spec)
    command = ["vllm", "serve", source, "--served-model-name", name, "--host", host, "--port", str(port),
               "--max-num-seqs", str(max_batch)]
    if adapters:
        modules, rank = [], 8
        for adapter, run in adapters.items():
            directory = adapter_dir(run)
            check_adapter(adapter, run, directory, source)
            modules.append(f"{adapter}={directory}")
            rank = max(rank, json.loads((directory / "adapter_config.json").read_text()).get("r", 8))
        command += ["--enable-lora", "--max-lora-rank", str(1 << (rank - 1).bit_length()), "--lora-modules", *modules]
    return command


def serve_with_vllm(command: list[str]) -> int:
    import torch

    if shutil.which("vllm") is None:
        raise UserError("--engine vllm needs vLLM on a CUDA machine: pip install vllm")
    if not torch.cuda.is_available():
        raise UserError("--engine vllm needs a CUDA GPU; without one, use the default engine (transformers)")
    print("running: " + " ".join(command), file=sys.stderr)
    return subprocess.call(command)
