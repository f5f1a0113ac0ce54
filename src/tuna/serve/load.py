"""The served model: one base, with each `--adapter NAME=RUN` loaded over it as a named PEFT adapter."""
from __future__ import annotations

import json
from pathlib import Path

from tuna import rundir
from tuna.errors import UserError, first_line
from tuna.models.load import load_any, resolve, run_model_config


def adapter_dir(run: str) -> Path:
    """The PEFT directory of a tuna run (its final/) or a PEFT adapter directory itself."""
    path = Path(run).expanduser()
    for candidate in (path / rundir.FINAL, path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    if rundir.is_run_dir(path):
        raise UserError(f"{run} trained all its weights, not an adapter: serve it as the model (tuna serve {run})")
    raise UserError(f"adapter not found: {run} is neither a tuna run with an adapter nor a PEFT adapter directory")


def check_adapter(name: str, run: str, directory: Path, base_source: str | None) -> None:
    """Refuse, before loading, what cannot share the served base: another adapter type, another base, rope
    scaling the base does not have."""
    kind = json.loads((directory / "adapter_config.json").read_text()).get("peft_type")
    if kind != "LORA":
        raise UserError(f"adapter {name}: {kind} adapters cannot share a batch with others; tuna serve takes LoRA "
                        "adapters (lora, dora, rslora, pissa, ... runs); export this one with tuna export --merge")
    model_cfg = run_model_config(run)
    if model_cfg is None:
        return
    if model_cfg.get("rope_scaling"):
        raise UserError(f"adapter {name} was trained with rope scaling the shared base does not have; serve its "
                        f"merged export instead (tuna export {run} --merge DIR)")
    if base_source is not None and resolve(model_cfg["name"]) != base_source:
        raise UserError(f"adapter {name} was trained on {model_cfg['name']}, not on the served model")


def load_served(spec: str, adapters: dict[str, str]):
    """(model, tokenizer): the base of `spec` (a run is merged into its base) with every adapter loaded."""
    directories = {name: adapter_dir(run) for name, run in adapters.items()}
    base_source = None if run_model_config(spec) else resolve(spec)
    for name, run in adapters.items():
        check_adapter(name, run, directories[name], base_source)
    model, tokenizer = load_any(spec)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    for name, directory in directories.items():
        model = attach(model, name, directory)
    return model.eval(), tokenizer


def attach(model, name: str, directory: Path):
    from peft import PeftModel

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(directory), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(directory), adapter_name=name)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        reason = first_line(exc)
        raise UserError(f"adapter {name} does not fit the served model: {reason[:300]}") from None
