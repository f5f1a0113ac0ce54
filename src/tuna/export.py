"""`tuna export RUN --merge OUT`: a plain transformers checkpoint, loadable with no tuna or peft installed."""
from __future__ import annotations

from pathlib import Path

from tuna import rundir
from tuna.atomic import atomic_directory
from tuna.errors import UserError
from tuna.models.load import load_any


def export_merged(run: str | Path, out: str | Path) -> Path:
    run, out = Path(run), Path(out)
    if not rundir.is_run_dir(run):
        raise UserError(f"{run} is not a finished tuna run (expected {rundir.CONFIG} and {rundir.FINAL}/)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new directory")
    model, tokenizer = load_any(str(run))
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_directory(out) as tmp:  # `out` is absent or empty here
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
