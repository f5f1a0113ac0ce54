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


def export_bitdelta(run: str | Path, out: str | Path, *, steps: int = 100, batches: int = 8, batch_size: int = 4,
                    lr: float = 1e-4, seed: int = 0, progress: bool = True) -> dict:
    """Compress a full fine-tune to BitDelta in `out`, its scales distilled on `batches` micro-batches of the
    run's own training data (the paper distils on a few hundred samples of generic text); returns what
    was measured."""
    from tuna.config import load_recipe
    from tuna.models import bitdelta
    from tuna.models.load import load_base

    run, out = Path(run), Path(out)
    if not rundir.is_run_dir(run):
        raise UserError(f"{run} is not a finished tuna run (expected {rundir.CONFIG} and {rundir.FINAL}/)")
    if not (run / rundir.FINAL / "config.json").is_file():
        raise UserError(f"{run} saved an adapter or a sparse delta, not a full model; BitDelta compresses the delta "
                        "of a full fine-tune (method full, freeze or hft)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new directory")
    recipe = load_recipe(run / rundir.CONFIG)
    tuned, tokenizer = load_any(str(run))
    base, _ = load_base(recipe.model.name)
    signs, scales, exact = bitdelta.compress(base, tuned)
    calibration = run_batches(recipe, tokenizer, batches, batch_size, seed)
    scales, before, after = bitdelta.distil(base, tuned, signs, scales, exact, calibration, steps=steps, lr=lr,
                                            progress=progress)
    with atomic_directory(out) as tmp:
        bitdelta.save(tmp, recipe.model.name, signs, scales, exact)
        tokenizer.save_pretrained(tmp)
    full = sum(f.stat().st_size for f in (run / rundir.FINAL).glob("*.safetensors"))
    return {"out": str(out), "bytes": (out / bitdelta.FILE).stat().st_size, "full_bytes": full,
            "matrices": len(signs), "exact_tensors": len(exact), "distillation_mse_before": before,
            "distillation_mse_after": after, "steps": steps}


def run_batches(recipe, tokenizer, batches: int, batch_size: int, seed: int) -> list[dict]:
    """`batches` collated micro-batches of a seeded sample of the run's training split."""
    import torch

    from tuna.data.batch import collate
    from tuna.data.dataset import load_splits

    items = load_splits(recipe.data, tokenizer, seed).train
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()[: batches * batch_size]
    return [collate([items[i] for i in order[s : s + batch_size]], tokenizer.pad_token_id)
            for s in range(0, len(order), batch_size)]
