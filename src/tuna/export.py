"""`tuna export`: a run as other tools take it: a plain transformers checkpoint (loadable with no tuna or
peft installed), BitDelta, or an upload to the Hugging Face Hub.

`tuna export RUN --merge OUT` merges a run's adapter or sparse delta into its base model, with the
run's model card.
`tuna export MODEL --apply-delta D1 D2 ... --merge OUT` adds sparse deltas (from `sparse` or
`s2ft` runs) to a base model or run, one after the other: deltas compose by addition.
`tuna export RUN --push-to-hub REPO` uploads to the Hugging Face Hub what standard tools load alone, with
the run's model card:
- an adapter run (the LoRA family, IA3, prompt and prefix tuning): the adapter folder, `final/` with its
  adapter_config.json naming the base by hub id (`models.hub`), for PEFT's `AutoPeftModelForCausalLM`;
- a full fine-tune (full, freeze, hft): `final/`, a transformers checkpoint;
- a sparse delta (sparse, s2ft), which no other tool reads, and an adapter trained with `model.rope_scaling`,
  which on its own would go on a base without the scaling: the merged checkpoint.
`--dry-run DIR` writes exactly that folder to DIR and uploads nothing. The push is the one network access
tuna makes: it lifts tuna's offline mode (`tuna/__init__.py`) for its two calls, and for nothing else.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from tuna import rundir
from tuna.atomic import atomic_directory
from tuna.errors import UserError, first_line
from tuna.models.hub import hub_id, name_base
from tuna.models.load import load_any, run_model_config
from tuna.models.sparse_delta import apply_delta, delta_file
from tuna.report.model_card import write_model_card


def export_merged(source: str | Path, out: str | Path, deltas: list[str] = (), *, location: str | None = None) -> Path:
    """`location`: where the model card's usage example loads the export from (a Hub repo it goes to)."""
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
        if rundir.is_run_dir(source):
            write_model_card(source, tmp, merged=True, added=list(deltas), location=location)
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


def stage(run: str | Path, out: str | Path, repo: str | None = None) -> Path:
    """Write the folder that goes to the Hub for `run` into `out` (absent or empty); its card loads from `repo`."""
    run, out = Path(run), Path(out)
    if not rundir.is_run_dir(run):
        raise UserError(f"{run} is not a finished tuna run (expected {rundir.CONFIG} and {rundir.FINAL}/)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new directory")
    final, model_cfg = run / rundir.FINAL, run_model_config(run)
    adapter = (final / "adapter_config.json").is_file() and not model_cfg.get("rope_scaling")
    if not (adapter or (final / "config.json").is_file()):
        return export_merged(run, out, location=repo)
    with atomic_directory(out) as tmp:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
        name_base(tmp, hub_id(model_cfg["name"]))  # a run saved before adapters named their base by hub id
        write_model_card(run, tmp, location=repo)
    return out


def push_to_hub(run: str | Path, repo: str) -> str:
    """Upload `run`'s folder to the Hub model repository `repo` (created when absent); the repository's URL."""
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="tuna-push-") as tmp:
        folder = stage(run, Path(tmp) / "upload", repo)
        try:
            with online():
                api = HfApi()
                url = api.create_repo(repo, exist_ok=True)
                api.upload_folder(repo_id=repo, folder_path=folder, commit_message=f"tuna: upload {Path(run).name}")
        except Exception as exc:  # no network, no token, no right to the repository, a malformed name: one line
            reason = first_line(exc)
            raise UserError(f"cannot push to the Hugging Face Hub repository {repo}: {reason[:300]}") from exc
    return str(url)


@contextlib.contextmanager
def online():
    from huggingface_hub import constants

    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
