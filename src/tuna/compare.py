"""`tuna compare MATRIX.yaml`: train several variants of one recipe at the same budget and score each.

A matrix is a `base` recipe (inline, or the path of a config file), a list of `variants` that each
override some of its keys (a method, an objective, a knob), the `task` held-out set that measures
learning, and where to write. Every variant trains for the same steps of the same batches from the
same seed, so the budget keys (`train.max_steps`, `epochs`, `micro_batch_size`, `grad_accum`, `seed`
and the data) may be set only in the base.

Each variant trains in its own process (`tuna train`, log in `variants/<name>/train.log`), so its
peak memory is its own and a crash cannot take the comparison down: a failing variant is recorded
with its error and the next one starts. The base model and every finished variant are then scored
in this process: the task metric on `task.data`, and the general suite (`eval.general`) for
forgetting. `results.json` is rewritten after every variant, so an interrupted comparison resumes
where it stopped: finished variants are kept (unless their recipe changed), an interrupted training
run resumes from its last checkpoint, and failed variants are tried again.

A variant may instead be a merge of earlier variants (`merge: {method, of, ...}`, `tuna merge`'s
methods): it costs no training, and is scored like the others. A variant may set its own
`train.seed` to be a replicate of another (merges such as Model Stock need several fine-tunes).

`seeds: [1, 2, 3]` runs every variant once per seed (`train.seed`; a merge merges the same seed's
runs), each a replicate `<name>@seed<k>` with its own folder `variants/<name>/seed-<k>/`, kept or
resumed on its own; the report gives each figure's mean over seeds with a 95% interval.
"""
from __future__ import annotations

import copy
import gc
import json
import shutil
import subprocess
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, field_validator, model_validator

from tuna import rundir
from tuna.atomic import atomic_write_text
from tuna.config import (describe_validation_error, load_recipe, registered_sections, sections_read_by,
                         validate_recipe)
from tuna.errors import UserError
from tuna.sections import Section
from tuna.train import checkpoint

BUDGET_KEYS = {"train": ("max_steps", "epochs", "micro_batch_size", "grad_accum"),
               "data": ("path", "eval_split", "max_tokens")}
RESULTS = "results.json"
SELECTED = "selected.jsonl"


class TaskSpec(Section):
    data: str | None = Field(None, description="held-out records to score; unset: the base recipe's eval_split file")
    metric: str = Field("exact_match", description="a generation metric of `tuna eval --metric`; with `harness`, "
                        "the lm-eval metric (tasks without it use acc, else exact_match)")
    harness: list[str] | None = Field(None, min_length=1, description="lm-evaluation-harness tasks scored instead of "
                                      "`data` (`tuna eval --harness` names): the mean over all their items")
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)


class MergeSpec(Section):
    """A variant made by merging earlier variants' results (`tuna merge`'s methods; no training)."""
    method: str = Field(description="a `tuna merge` method: linear, task_arithmetic, ties, dare_linear, dare_ties, "
                        "slerp, model_stock, lines")
    of: list[str] = Field(min_length=1, description="names of earlier variants whose results are merged")
    weights: list[float] | None = Field(None, description="one weight per variant in `of`, for the methods that "
                                        "weigh their inputs (default 1 each)")
    lines: dict | None = Field(None, description="LiNeS on the merged task vector: {alpha, beta}")
    parameters: dict = Field({}, description="the method's other parameters (alpha, beta, t, density, lambda, "
                             "normalize, ...), also accepted at this level")
    model_config = ConfigDict(extra="allow")

    def merge_config(self, base_model: str, runs: list[str]) -> dict:
        from tuna.merge.rules import RULES

        rule = RULES.get(self.method)
        if self.weights is not None and len(self.weights) != len(runs):
            raise UserError(f"merge.weights has {len(self.weights)} values for {len(runs)} variants in merge.of")
        models = [{"model": run} for run in runs]
        for model, weight in zip(models, self.weights or []):
            model["parameters"] = {"weight": weight}
        config = {"merge_method": self.method, "parameters": {**self.parameters, **(self.model_extra or {})},
                  "models": models}
        if rule is None or rule.needs_base:
            config["base_model"] = base_model
        if self.lines is not None:
            config["lines"] = self.lines
        return config


class GeneralSpec(Section):
    suite: bool = Field(True, description="the built-in forgetting probe: general-text perplexity and 48 questions")
    harness: list[str] = Field([], description="lm-evaluation-harness tasks whose accuracy change is also reported "
                               "(e.g. tuna_knowledge_mc, tuna_cloze: 305 items each)")


class Matrix(Section):
    base: str | dict = Field(description="a config file path, or an inline recipe")
    variants: list[dict | str] = Field(min_length=1, description="recipe overrides, each with a `name`; a bare "
                                       "string is a method name")
    task: TaskSpec = TaskSpec()
    general: bool | GeneralSpec = Field(True, description="score forgetting with the general suite (true), or "
                                        "{suite, harness}: the suite and/or lm-eval tasks")
    seeds: list[int] | None = Field(None, min_length=1, description="train every variant once per seed (train.seed); "
                                    "figures get means and 95% intervals")
    harness_include: list[str] = Field([], description="directories of more lm-eval task YAMLs (tuna eval "
                                       "--include-path), beside examples/harness")
    output_dir: str = "runs/compare"

    @field_validator("variants")
    @classmethod
    def _named_once(cls, variants: list) -> list:
        names = [v if isinstance(v, str) else v.get("name") for v in variants]
        if any(not isinstance(n, str) or not n for n in names):
            raise ValueError("every variant needs a `name`")
        if any(not n.replace("-", "").replace("_", "").isalnum() for n in names):
            raise ValueError("variant names may hold only letters, digits, - and _")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant name {repeated[0]!r} is used twice")
        return variants

    @model_validator(mode="after")
    def _seeds_own_the_seed(self) -> Matrix:
        if self.seeds is None:
            return self
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: each seed once")
        seeded = [variant_name(v) for v in self.variants
                  if isinstance(v, dict) and isinstance(v.get("train"), dict) and "seed" in v["train"]]
        if seeded:
            raise ValueError(f"variant {seeded[0]!r} sets train.seed, which `seeds` sets for every variant")
        return self

    def replicates(self) -> list[tuple[str, int | None]]:
        """(variant name, seed) of every run, variant by variant; the seed is None without `seeds`."""
        return [(variant_name(v), seed) for v in self.variants for seed in (self.seeds or [None])]

    @property
    def general_spec(self) -> GeneralSpec:
        return self.general if isinstance(self.general, GeneralSpec) else GeneralSpec(suite=self.general)

    @cached_property
    def harness_requests(self) -> dict:
        """{"task" | "general": the checked lm-eval request} for what the matrix scores through the harness;
        an unknown task or a missing data file is refused here, before anything trains. Checked once: every
        model scored reuses it."""
        from tuna.eval.harness import check_request

        named = {"task": self.task.harness, "general": self.general_spec.harness}
        return {role: check_request(names, self.harness_include, limit=None, num_fewshot=None)
                for role, names in named.items() if names}


def replicate_key(name: str, seed: int | None) -> str:
    """The entry of one run in results.json: the variant's name, `@seed<k>` added under `seeds`."""
    return name if seed is None else f"{name}@seed{seed}"


def variant_name(variant: dict | str) -> str:
    """A bare string names its variant (and its method)."""
    return variant if isinstance(variant, str) else variant["name"]


def load_matrix(path: str | Path) -> Matrix:
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"matrix file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return Matrix.model_validate(raw)
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc).replace("invalid config", "invalid matrix")) from None


def base_recipe(matrix: Matrix, matrix_dir: Path) -> dict:
    """The base recipe's keys as written (inline, or a config file beside the matrix), checked once."""
    if isinstance(matrix.base, dict):
        raw = copy.deepcopy(matrix.base)
        validate_recipe(raw)
        return raw
    path = Path(matrix.base)
    if not path.is_absolute() and not path.exists():
        path = matrix_dir / path
    load_recipe(path)  # the same checks and messages as `tuna train`
    return yaml.safe_load(path.read_text()) or {}


def variant_recipe(base: dict, variant: dict | str, run_dir: Path, seed: int | None = None) -> tuple[str, dict]:
    """(name, raw recipe) of a variant: the base with the variant's keys merged over it. The base's
    method and objective sections that the variant's method or objective does not read are dropped,
    so a LoRA base can have a full fine-tuning variant."""
    name = variant_name(variant)
    overrides = {"method": variant} if isinstance(variant, str) else {k: v for k, v in variant.items() if k != "name"}
    for section, keys in BUDGET_KEYS.items():
        fixed = [k for k in keys if k in (overrides.get(section) or {})]
        if fixed:
            raise UserError(f"variant {name}: {section}.{fixed[0]} is part of the shared budget; set it in the base")
    merged = merge(base, overrides)
    if seed is not None:
        merged["train"] = {**(merged.get("train") or {}), "seed": seed}
    method, objective = merged.get("method", "lora"), merged.get("objective", "sft")
    for section in set(registered_sections()) - sections_read_by(method, objective):
        if section not in overrides:
            merged.pop(section, None)
    return name, {**merged, "output_dir": str(run_dir)}


def merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def task_data(matrix: Matrix, base: dict, matrix_dir: Path) -> Path:
    data = matrix.task.data or (base.get("data") or {}).get("eval_split")
    if not isinstance(data, str):
        raise UserError("set task.data in the matrix: the held-out records the task metric is scored on")
    path = Path(data)
    return path if path.exists() or path.is_absolute() else matrix_dir / path


def score_model(spec: str, matrix: Matrix, task_path: Path | None, *, progress: bool) -> dict:
    """Task score (and the general suite, and harness tasks) of a base model or a finished run."""
    from tuna.eval.general import general_suite
    from tuna.eval.harness import item_scores, run_harness
    from tuna.models.load import load_any

    model, tokenizer = load_any(spec)
    harness = matrix.harness_requests
    if "task" in harness:
        items = item_scores(run_harness(harness["task"], model, tokenizer, log_samples=True,
                                        batch_size=matrix.task.batch_size), matrix.task.metric)
    else:
        items = task_items(model, tokenizer, matrix, task_path, progress=progress)
    scores = {"task": sum(items) / len(items), "task_items": items}  # the items: for an interval over them
    if matrix.general_spec.suite:
        scores.update(general_suite(model, tokenizer))
    if "general" in harness:
        general = item_scores(run_harness(harness["general"], model, tokenizer, log_samples=True), "acc")
        scores["general_harness"] = sum(general) / len(general)
    del model
    gc.collect()
    return scores


def task_items(model, tokenizer, matrix: Matrix, task_path: Path, *, progress: bool) -> list[float]:
    """Each held-out task record's score under `task.metric`."""
    from tuna.data.read import read_records
    from tuna.eval.scorers import get_metrics
    from tuna.eval.task import evaluate_task, read_task

    _, rows = evaluate_task(model, tokenizer, read_task(read_records(task_path)), get_metrics([matrix.task.metric]),
                            max_new_tokens=matrix.task.max_new_tokens, batch_size=matrix.task.batch_size,
                            progress=progress)
    return [row["scores"][matrix.task.metric] for row in rows]


def train_variant(config_path: Path, run_dir: Path, log_path: Path, *, progress: bool) -> str | None:
    """Train one variant in a child process; None when it finished, else its error message."""
    command = [sys.executable, "-m", "tuna", "train", str(config_path)]
    if checkpoint.checkpoints(run_dir / rundir.CHECKPOINTS) and not (run_dir / rundir.FINAL).exists():
        command = [sys.executable, "-m", "tuna", "train", "--resume", str(run_dir)]
    if not progress:
        command.append("--no-progress")
    with log_path.open("ab") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
        for chunk in iter(lambda: child.stdout.read1(4096), b""):  # the child's progress, live, and its log
            log.write(chunk)
            if progress:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
        code = child.wait()
    if code == 0:
        return None
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tuna: error:")]
    return (errors[-1].removeprefix("tuna: error: ") if errors else (lines[-1] if lines else "no output")) + \
        f" (exit code {code}; log {log_path})"


def run_compare(matrix_path: str | Path, *, output_dir: str | None = None, progress: bool = True) -> dict:
    """Train and score every variant, then write results.json, summary.md and report.html."""
    from tuna.report.compare_report import write_compare_outputs

    matrix_path = Path(matrix_path)
    matrix = load_matrix(matrix_path)
    out = Path(output_dir or matrix.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base_recipe(matrix, matrix_path.parent)
    matrix.harness_requests  # harness tasks checked before anything trains
    task_path = None if matrix.task.harness else task_data(matrix, base, matrix_path.parent)
    if task_path is not None and not task_path.is_file():
        raise UserError(f"task data not found: {task_path}")
    say = lambda msg: print(f"tuna compare: {msg}", file=sys.stderr, flush=True)
    results = read_results(out / RESULTS)
    results.update(matrix=str(matrix_path), output_dir=str(out))
    save = lambda: (atomic_write_text(out / RESULTS, json.dumps(results, indent=1) + "\n"),
                    write_compare_outputs(out, results))
    if results.get("base") is None:
        model_name = validate_recipe(base).model.name
        say(f"scoring the base model {model_name}")
        started = time.perf_counter()
        results["base"] = score_model(model_name, matrix, task_path, progress=progress)
        results["base_score_seconds"] = time.perf_counter() - started
        save()
    variants = {variant_name(v): v for v in matrix.variants}
    replicates = matrix.replicates()
    for position, (name, seed) in enumerate(replicates, start=1):
        variant, key = variants[name], replicate_key(name, seed)
        folder = out / "variants" / name / (f"seed-{seed}" if seed is not None else "")
        tag = f"[{position}/{len(replicates)}] {key}"
        if isinstance(variant, dict) and "merge" in variant:
            earlier = {n: results["variants"].get(replicate_key(n, seed)) for n in list(variants)[:list(variants).index(name)]}
            results["variants"][key] = merged_variant(variant, results["variants"].get(key, {}), earlier, base,
                                                      folder, matrix, task_path, say=lambda msg: say(f"{tag}: {msg}"),
                                                      progress=progress)
            save()
            continue
        try:
            variant, select = without_selection(variant)
            _, raw = variant_recipe(base, variant, folder / "run", seed)
            if select is not None:
                raw["data"]["path"] = str(folder / SELECTED)
            recipe = validate_recipe(raw)
        except UserError as exc:
            results["variants"][key] = {"status": "failed", "error": str(exc)}
            say(f"{tag}: failed: {exc}")
            save()
            continue
        config = recipe.to_yaml() + (f"# data.select: {select.model_dump_json(exclude_defaults=True)}\n"
                                     if select is not None else "")
        previous = results["variants"].get(key, {})
        if previous.get("status") == "done" and previous.get("config") == config and rundir.is_run_dir(folder / "run"):
            say(f"{tag}: done earlier, kept")
            continue
        if previous.get("config") not in (None, config) and folder.exists():
            say(f"{tag}: its recipe changed; training it afresh")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(config)
        started = time.perf_counter()
        error = None
        if select is not None and not (folder / SELECTED).is_file():
            say(f"{tag}: selecting {select.budget} with {select.strategy}")
            error = selected_data(select, base, recipe, folder / SELECTED, out / "selection-scores.jsonl",
                                  progress=progress)
        if error is None:
            say(f"{tag}: training (log {folder / 'train.log'})")
            error = train_variant(folder / "config.yaml", folder / "run", folder / "train.log", progress=progress)
        entry = {"status": "failed", "config": config, "error": error, "wall_seconds": time.perf_counter() - started}
        if error is None:
            try:
                entry = {**entry, **finished_variant(folder / "run", matrix, task_path, progress=progress)}
                entry.update(status="done", error=None)
            except UserError as exc:
                entry["error"] = f"scoring failed: {exc}"
        results["variants"][key] = entry
        say(f"{tag}: {entry['status']}"
            + (f": {entry['error']}" if entry["error"] else ""))
        save()
    # in the matrix's order; a variant removed from the matrix leaves the report
    results["variants"] = {key: results["variants"][key] for key in (replicate_key(*r) for r in replicates)
                           if key in results["variants"]}
    results["seeds"] = matrix.seeds
    save()
    return results


class SelectSpec(Section):
    """`data.select` of a variant: its training data is a selection from the base recipe's data."""
    strategy: str = Field(description="a `tuna data select` strategy, or several joined by commas")
    budget: str | int = Field(description="records kept: a count, or a share of the pool like 20%")
    model: str | None = Field(None, description="the scorer (default: the base recipe's model)")
    order: Literal["low", "high"] = "low"
    length_min: int = 0
    length_max: int | None = None
    lobass_steps: int = Field(20, ge=1)


def without_selection(variant: dict | str) -> tuple[dict | str, SelectSpec | None]:
    """The variant without its `data.select`, and that selection (checked)."""
    from pydantic import ValidationError

    if not isinstance(variant, dict) or not isinstance(variant.get("data"), dict) or "select" not in variant["data"]:
        return variant, None
    data = {k: v for k, v in variant["data"].items() if k != "select"}
    try:
        spec = SelectSpec.model_validate(variant["data"]["select"])
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc).replace("invalid config", "invalid data.select")) from None
    rest = {k: v for k, v in variant.items() if k != "data"}
    return ({**rest, "data": data} if data else rest), spec


def selected_data(select: SelectSpec, base: dict, recipe, out: Path, scores: Path, *, progress: bool) -> str | None:
    """Select from the base recipe's data into `out`; None when done, else the error."""
    from tuna.selection.run import select_records

    pool = (base.get("data") or {}).get("path")
    if not pool:
        return "data.select selects from the base recipe's data.path, which is not set"
    try:
        summary = select_records(pool, select.strategy, str(select.budget), out,
                                 model=select.model or recipe.model.name, scores_out=scores, seed=recipe.train.seed,
                                 max_tokens=recipe.data.max_tokens, progress=progress, order=select.order,
                                 length_min=select.length_min, length_max=select.length_max,
                                 lobass_steps=select.lobass_steps)
    except UserError as exc:
        return f"selection failed: {exc}"
    print(f"tuna compare: selected {summary['kept']} of {summary['pool']} records"
          + "".join(f"; {n}" for n in summary["notes"]), file=sys.stderr, flush=True)
    return None


def merged_variant(variant: dict, previous: dict, earlier: dict, base: dict, folder: Path, matrix: Matrix,
                   task_path: Path, *, say, progress: bool) -> dict:
    """Merge earlier variants' results (`earlier`: name -> entry, of the variants listed before this one) as
    `variant["merge"]` says, then score the merged model. Kept from an earlier pass when neither its recipe
    nor the variants it merges changed (`previous`: its entry from that pass)."""
    from pydantic import ValidationError

    from tuna.merge.run import merge_models

    try:
        if set(variant) != {"name", "merge"}:
            raise UserError(f"a merge variant takes only `name` and `merge`, not {sorted(set(variant) - {'name', 'merge'})[0]}")
        try:
            spec = MergeSpec.model_validate(variant["merge"])
        except ValidationError as exc:
            raise UserError(describe_validation_error(exc).replace("invalid config", "invalid merge")) from None
        inputs = []
        for name in spec.of:
            entry = earlier.get(name)
            if entry is None or entry.get("status") != "done" or not entry.get("run_dir", entry.get("model_dir")):
                raise UserError(f"merge.of names {name!r}, which is not an earlier variant that finished")
            inputs.append(entry)
        config = spec.merge_config(validate_recipe(base).model.name,
                                   [e.get("run_dir") or e["model_dir"] for e in inputs])
        recipe = yaml.safe_dump({"merge": config, "inputs": [e["config"] for e in inputs]}, sort_keys=False)
        model_dir = folder / "model"
        if previous.get("status") == "done" and previous.get("config") == recipe and model_dir.is_dir():
            say("done earlier, kept")
            return previous
        if folder.exists():
            shutil.rmtree(folder)
        say(f"merging {', '.join(spec.of)} ({spec.method})")
        started = time.perf_counter()
        merge_models(config, model_dir, progress=progress)
        merge_seconds = time.perf_counter() - started
        scores = score_model(str(model_dir), matrix, task_path, progress=progress)
    except UserError as exc:
        say(f"failed: {exc}")
        return {"status": "failed", "error": str(exc)}
    say("done")
    return {"status": "done", "error": None, "config": recipe, "merged_from": spec.of, "merge_method": spec.method,
            "model_dir": str(model_dir), "merge_seconds": merge_seconds, "steps": 0, "tokens": 0,
            "train_seconds": 0.0, "tokens_per_s": None, "trainable_params": None, "peak_memory_mb": None,
            "train_loss": None, "eval_loss": None, "loss_curve": [], "scores": scores,
            "wall_seconds": time.perf_counter() - started}


def finished_variant(run_dir: Path, matrix: Matrix, task_path: Path, *, progress: bool) -> dict:
    """What a finished run measured while training, and its scores."""
    from tuna.rundir import read_metrics

    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    curve = [(r["step"], r["train/loss"]) for r in read_metrics(run_dir / rundir.METRICS)]
    started = time.perf_counter()
    scores = score_model(str(run_dir), matrix, task_path, progress=progress)
    return {"run_dir": str(run_dir), "steps": summary["steps"], "tokens": summary["tokens"],
            "train_seconds": summary["seconds"], "tokens_per_s": summary["tokens"] / max(summary["seconds"], 1e-9),
            "trainable_params": summary["trainable_params"], "total_params": summary["total_params"],
            "peak_memory_mb": summary["peak_memory_mb"], "train_loss": summary["train_loss"],
            "eval_loss": summary["eval_loss"], "loss_curve": curve, "scores": scores,
            "score_seconds": time.perf_counter() - started}


def read_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        results = json.loads(path.read_text())
        results.setdefault("variants", {})
        return results
    return {"base": None, "variants": {}}
