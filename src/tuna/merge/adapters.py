"""`output: adapter`: combine LoRA adapters of one base into one LoRA adapter with PEFT's
`add_weighted_adapter`, never building a merged full model. The base is loaded once, because PEFT
attaches adapters to a model; the result is a standard PEFT adapter directory."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tuna import __version__, rundir
from tuna.atomic import atomic_directory
from tuna.errors import UserError
from tuna.merge.config import MergeConfig
from tuna.merge.sources import has_tokenizer
from tuna.merge.write import model_card
from tuna.models.load import base_model_of, load_any, load_tokenizer

COMBINATIONS = ("linear", "cat", "ties", "dare_ties", "dare_linear", "svd")
SHARED = {"density", "svd_rank"}


def adapter_dir(spec: str) -> tuple[Path, str]:
    """(adapter directory, its base model spec) of a LoRA run directory or a PEFT LoRA adapter directory."""
    path = Path(spec).expanduser()
    run_base = base_model_of(spec)
    directory = path / rundir.FINAL if run_base else path
    config_file = directory / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{spec} is not a LoRA adapter (no adapter_config.json); output: adapter combines adapters only")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise UserError(f"{spec} is a {config.get('peft_type')} adapter; output: adapter combines LoRA adapters only")
    return directory, run_base or config.get("base_model_name_or_path")


def merge_adapters(cfg: MergeConfig, out: Path) -> Path:
    from peft import PeftModel

    if cfg.merge_method not in COMBINATIONS:
        raise UserError(f"output: adapter combines with {', '.join(COMBINATIONS)}, not {cfg.merge_method!r}")
    unknown = sorted(set(cfg.parameters) - SHARED) + sorted({k for m in cfg.models for k in m.parameters} - {"weight"})
    if unknown:
        raise UserError(f"adapter merges read weight (per adapter), density and svd_rank; not {unknown[0]!r}")
    density = cfg.parameters.get("density")
    if cfg.merge_method in ("ties", "dare_ties", "dare_linear"):
        if density is None or not 0 < density <= 1:
            raise UserError(f"{cfg.merge_method} needs parameters.density in (0, 1], got {density!r}")
    adapters = [adapter_dir(m.model) for m in cfg.models]
    bases = {base for _, base in adapters}
    if len(bases) > 1 or (cfg.base_model and cfg.base_model not in bases):
        raise UserError(f"the adapters must share one base: they name {', '.join(sorted(map(str, bases)))}"
                        + (f" and base_model is {cfg.base_model}" if cfg.base_model else ""))
    base_spec = cfg.base_model or bases.pop()
    base, base_tokenizer = load_any(base_spec)
    model = PeftModel.from_pretrained(base, str(adapters[0][0]), adapter_name="input0")
    for i, (directory, _) in enumerate(adapters[1:], start=1):
        model.load_adapter(str(directory), adapter_name=f"input{i}")
    torch.manual_seed(cfg.seed)  # PEFT's DARE draws from the global generator
    model.add_weighted_adapter([f"input{i}" for i in range(len(adapters))],
                               [m.parameters.get("weight", 1.0) for m in cfg.models], "merged",
                               combination_type=cfg.merge_method, density=density,
                               svd_rank=cfg.parameters.get("svd_rank"))
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp / "peft", selected_adapters=["merged"])
        for f in (tmp / "peft" / "merged").iterdir():
            shutil.move(f, tmp / f.name)
        shutil.rmtree(tmp / "peft")
        first = adapters[0][0]
        (load_tokenizer(str(first)) if has_tokenizer(first) else base_tokenizer).save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(cfg.model_dump(exclude_defaults=True), [m.model for m in cfg.models],
                                                  __version__, adapter=True))
    return out
