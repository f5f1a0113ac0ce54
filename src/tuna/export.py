"""`tuna export`: a plain transformers checkpoint, loadable with no tuna or peft installed.

`tuna export RUN --merge OUT` merges a run's adapter or sparse delta into its base model.
`tuna export MODEL --apply-delta D1 D2 ... --merge OUT` adds sparse deltas (from `sparse` or
`s2ft` runs) to a base model or run, one after the other: deltas compose by addition.
"""
from __future__ import annotations

from pathlib import Path

from tuna import rundir
from tuna.atomic import atomic_directory
from tuna.errors import UserError
from tuna.models.load import load_any
from tuna.models.sparse_delta import apply_delta, delta_file


def export_merged(source: str | Path, out: str | Path, deltas: list[str] = ()) -> Path:
    source, out = Path(source), Path(out)
    if not deltas and not rundir.is_run_dir(source):
        raise UserError(f"{source} is not a finished tuna run (expected {rundir.CONFIG} and {rundir.FINAL}/)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new directory")
    files = [delta_file(d) for d in deltas]  # every delta is checked before the model loads
    model, tokenizer = load_any(str(source))
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    for path in files:
        apply_delta(model, path)
    with atomic_directory(out) as tmp:  # `out` is absent or empty here
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
