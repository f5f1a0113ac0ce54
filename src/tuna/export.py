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
    """Compress a full fine-tune to BitDelta in `out` and distil its scales; returns what was measured.

    The scales are trained, signs fixed, to make the compressed model's logits match the fine-tune's
    (mean squared error over the vocabulary, Adam), on `batches` micro-batches of the run's own training
    data, as the paper distils on a few hundred samples of generic text."""
    import torch
    from torch.func import functional_call
    from tqdm.auto import tqdm

    from tuna.config import load_recipe
    from tuna.data.batch import collate
    from tuna.data.dataset import load_splits
    from tuna.models import bitdelta
    from tuna.models.forward import MODEL_INPUTS
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
    items = load_splits(recipe.data, tokenizer, seed).train
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()[: batches * batch_size]
    calibration = [collate([items[i] for i in order[s : s + batch_size]], tokenizer.pad_token_id)
                   for s in range(0, len(order), batch_size)]
    tuned.eval()
    base.eval().requires_grad_(False)
    with torch.no_grad():
        targets = [tuned(**{k: b[k] for k in MODEL_INPUTS if k in b}).logits for b in calibration]
    base_params = dict(base.named_parameters())
    alphas = {name: torch.nn.Parameter(scale.clone()) for name, scale in scales.items()}

    def distillation_loss(batch, target) -> torch.Tensor:
        weights = {name: base_params[name] + alphas[name] * signs[name] for name in signs}
        weights.update({name: base_params[name] + delta for name, delta in exact.items()})
        logits = functional_call(base, weights, kwargs={k: batch[k] for k in MODEL_INPUTS if k in batch}).logits
        keep = batch["attention_mask"].bool()
        return ((logits - target) ** 2)[keep].mean()

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(float(distillation_loss(b, t)) for b, t in zip(calibration, targets)) / len(calibration)

    before = mean_loss()
    optimizer = torch.optim.Adam(list(alphas.values()), lr=lr)
    for step in tqdm(range(steps), desc="bitdelta: distil scales", disable=not progress, leave=False):
        optimizer.zero_grad()
        distillation_loss(calibration[step % len(calibration)], targets[step % len(targets)]).backward()
        optimizer.step()
    after = mean_loss()
    with atomic_directory(out) as tmp:
        bitdelta.save(tmp, recipe.model.name, signs, {n: a.detach() for n, a in alphas.items()}, exact)
        tokenizer.save_pretrained(tmp)
    full = sum(f.stat().st_size for f in (run / rundir.FINAL).glob("*.safetensors"))
    return {"out": str(out), "bytes": (out / bitdelta.FILE).stat().st_size, "full_bytes": full,
            "matrices": len(signs), "exact_tensors": len(exact), "distillation_mse_before": before,
            "distillation_mse_after": after, "steps": steps}
