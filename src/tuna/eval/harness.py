"""`tuna eval --harness`: EleutherAI's lm-evaluation-harness on the model tuna has loaded, offline.

lm-eval gets the model object tuna loaded (`HFLM(pretrained=model)`), never a name to reload, so a
run directory is scored with its adapter on: a PeftModel goes in as it is, its forward applying the
adapter (a LoRA run scores as a merged copy of it does, a prompt-tuning run as tuna's own scorer).

Nothing is downloaded. The hub and datasets libraries are offline while lm-eval runs; tuna's tasks
(examples/harness) and those of --include-path read local JSONL (`dataset_path: json` with
`dataset_kwargs: {data_files: ...}`); a standard task (mmlu, arc_easy, ...) runs where its dataset is
in the local Hugging Face cache. tuna indexes the task directories itself (a later directory's task
wins a name) and gives lm-eval one directory of small YAMLs, each including one task with its
relative `data_files` paths made absolute: they are read from the YAML's directory, not the working
directory as in lm-eval alone. Requests are checked before the model loads: data files exist, and a name
is a local task or appears in lm-eval's own task YAMLs (a second's scan; indexing them all takes ~20 s,
so that is done only when a standard task is asked for).
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tuna.errors import UserError

SHIPPED = Path(__file__).resolve().parents[3] / "examples" / "harness"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE")


@dataclass(frozen=True)
class LocalTask:
    name: str
    path: Path  # its YAML
    config: dict  # its keys, included files merged in (lm-eval's `!function` tags left as text)

    @property
    def members(self) -> list | None:
        """A group's `task` list; None for a task."""
        return self.config["task"] if isinstance(self.config.get("task"), list) else None

    def data_files(self) -> list[str]:
        files = (self.config.get("dataset_kwargs") or {}).get("data_files")
        values = files.values() if isinstance(files, dict) else [] if files is None else [files]
        return [f for v in values for f in (v if isinstance(v, list) else [v])]


@dataclass
class HarnessRequest:
    """What `tuna eval --harness` was asked, checked: the task names and the local tasks."""
    names: list[str]
    local: dict[str, LocalTask]
    standard: list[str] = field(default_factory=list)  # names only lm-eval's own index can provide


class _Loader(yaml.SafeLoader):
    """lm-eval's YAML: a `!function module.name` tag is kept as its text."""


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def read_task_yaml(path: Path) -> dict:
    """A task YAML with its `include`s merged under it, as lm-eval reads it."""
    config = yaml.load(path.read_text(), Loader=_Loader)
    if not isinstance(config, dict):
        return {}
    includes = config.pop("include", [])
    merged = {}
    for include in includes if isinstance(includes, list) else [includes]:
        merged.update(read_task_yaml(path.parent / include))
    return {**merged, **config}


def local_tasks(dirs: list[Path]) -> dict[str, LocalTask]:
    """The tasks and groups of these directories; a later directory's wins a name (as in lm-eval)."""
    tasks = {}
    for directory in dirs:
        for path in sorted(directory.rglob("*.yaml")):
            try:
                config = read_task_yaml(path)
            except (OSError, yaml.YAMLError):
                continue  # lm-eval skips a YAML it cannot read too
            name = config.get("group") if isinstance(config.get("task"), list) else config.get("task")
            if isinstance(name, str):
                tasks[name] = LocalTask(name, path, config)
    return tasks


def check_request(names: list[str], include: list[str], *, limit: int | None,
                  num_fewshot: int | None) -> HarnessRequest:
    """Everything about a request that can be wrong, before the model is loaded."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("--harness needs EleutherAI's lm-evaluation-harness: pip install 'tuna[harness]'")
    if not names:
        raise UserError("--harness needs at least one task name")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 example per task; got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot must be 0 or more; got {num_fewshot}")
    missing = next((d for d in include if not Path(d).is_dir()), None)
    if missing is not None:
        raise UserError(f"--include-path {missing} is not a directory")
    dirs = [d for d in [SHIPPED, *map(Path, include)] if d.is_dir()]
    request = HarnessRequest(list(names), local_tasks(dirs))
    for name in names:
        _check_name(name, request)
    found = _names_in_lm_eval_yamls(request.standard)
    unknown = [name for name in request.standard if name not in found]
    if unknown:
        raise unknown_task(unknown[0], request.local)
    return request


def _check_name(name: str, request: HarnessRequest) -> None:
    """A local task's data files exist (a group's members', in turn); other names are left to lm-eval."""
    task = request.local.get(name)
    if task is None:
        request.standard.append(name)
    elif task.members is None:
        check_data_files(task)
    else:
        for member in _member_names(task.members):
            _check_name(member, request)


def _member_names(members: list):
    """A group's task names: plain, with overrides ({task: name, ...}) or in an inline group's own list."""
    for member in members:
        if isinstance(member, str):
            yield member
        elif isinstance(member, dict) and isinstance(member.get("task"), str):
            yield member["task"]
        elif isinstance(member, dict) and isinstance(member.get("task"), list):
            yield from _member_names(member["task"])


def check_data_files(task: LocalTask) -> None:
    for name in task.data_files():
        if "://" in name:
            continue
        path = task.path.parent / name
        if not (glob.glob(str(path)) if any(c in name for c in "*?[") else path.is_file()):
            raise UserError(f"harness task {task.name} ({task.path}) reads {name}, which does not exist "
                            f"(a relative path is read from the YAML's directory)")


def _names_in_lm_eval_yamls(names: list[str]) -> set[str]:
    """Those of `names` that appear as a word in some YAML of lm-eval's task directory: a name in none is
    surely not an lm-eval task, and this needs no index."""
    if not names:
        return set()
    root = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, names)) + r")(?![\w.-])")
    found = set()
    for path in root.rglob("*.yaml"):
        found.update(pattern.findall(path.read_text(errors="ignore")))
    return found


def unknown_task(name: str, local: dict[str, LocalTask]) -> UserError:
    shipped = sorted(t.name for t in local.values() if t.path.parent == SHIPPED)
    return UserError(f"unknown harness task {name!r}; tuna's own (examples/harness): {', '.join(shipped) or 'none'}; "
                     "standard lm-eval tasks (mmlu, arc_easy, hellaswag, gsm8k, ...) run when their datasets are in "
                     "the local Hugging Face cache (docs/evaluation.md)")


@contextlib.contextmanager
def offline():
    """The hub and datasets libraries offline meanwhile: the environment for what is imported later,
    the flags of what is imported already (they read the environment once, at import)."""
    import datasets.config
    import huggingface_hub.constants

    saved_env = {key: os.environ.get(key) for key in OFFLINE_ENV}
    flags = [(huggingface_hub.constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
             (datasets.config, "HF_DATASETS_OFFLINE")]
    saved_flags = [getattr(module, name) for module, name in flags]
    os.environ.update(dict.fromkeys(OFFLINE_ENV, "1"))
    for module, name in flags:
        setattr(module, name, True)
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for (module, name), value in zip(flags, saved_flags):
            setattr(module, name, value)


def write_mirrors(tasks: list[LocalTask], directory: Path) -> None:
    """One small YAML per local task or group, in the one task directory lm-eval is given: it includes the
    original, restates the keys lm-eval indexes by (`task`, `group`, `tag`) and the data files, made
    absolute. So tuna, not the lm-eval version, settles which directory's task wins a name."""
    for number, task in enumerate(tasks):
        mirror = {"include": str(task.path.resolve())}
        mirror.update({key: task.config[key] for key in ("group", "task", "tag") if key in task.config})
        files = (task.config.get("dataset_kwargs") or {}).get("data_files")
        if files is not None:
            mirror["dataset_kwargs"] = {**task.config["dataset_kwargs"], "data_files": _absolute(files, task.path.parent)}
        (directory / f"{number:04d}_{task.name}.yaml").write_text(yaml.safe_dump(mirror))


def _absolute(files, base: Path):
    if isinstance(files, dict):
        return {split: _absolute(value, base) for split, value in files.items()}
    if isinstance(files, list):
        return [_absolute(value, base) for value in files]
    return files if "://" in files or Path(files).is_absolute() else str((base / files).resolve())


def task_manager(request: HarnessRequest, staging: Path):
    """lm-eval's TaskManager over the local tasks' mirrors (written to `staging`); lm-eval's own tasks are
    indexed only when the request names one."""
    from lm_eval.tasks import TaskManager

    write_mirrors(list(request.local.values()), staging)
    manager = TaskManager(include_path=str(staging), include_defaults=bool(request.standard))
    unknown = [name for name in request.standard if name not in manager.all_tasks]
    if unknown:
        raise unknown_task(unknown[0], request.local)
    return manager


def run_harness(request: HarnessRequest, model, tokenizer, *, num_fewshot: int | None = None,
                limit: int | None = None, apply_chat_template: bool = False, log_samples: bool = False,
                batch_size: int = 8) -> dict:
    """lm-eval's `simple_evaluate` on the loaded model: its results dict (with `samples` if `log_samples`)."""
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError("--apply-chat-template: the model's tokenizer has no chat template")
    with offline(), tempfile.TemporaryDirectory(prefix="tuna-harness-") as staging:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        manager = task_manager(request, Path(staging))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            return simple_evaluate(model=lm, tasks=request.names, task_manager=manager, num_fewshot=num_fewshot,
                                   limit=limit, apply_chat_template=apply_chat_template, log_samples=log_samples)
        except ConnectionError as exc:  # datasets' offline mode: a dataset that is not in the local cache
            raise UserError(f"a task's dataset is not in the local Hugging Face cache and tuna runs lm-eval "
                            f"offline: {str(exc).splitlines()[0][:300]}") from None


def summarize(results: dict) -> dict:
    """{task: {metric: {"value", "stderr"}}}; a metric is named `metric` under lm-eval's default filter,
    else `metric,filter`."""
    summary = {}
    for task, values in results["results"].items():
        metrics = {}
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            metrics[metric if filter_name == "none" else key] = {
                "value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None}
        summary[task] = metrics
    return summary


def format_table(results: dict) -> str:
    """lm-eval's own tables: tasks, and groups when there are any."""
    from lm_eval.utils import make_table

    return make_table(results) + ("\n" + make_table(results, "groups") if results.get("groups") else "")


def write_results(out_dir: str | Path, results: dict) -> Path:
    """results.json (lm-eval's results), summary.json (`summarize`), samples_<task>.jsonl with --log-samples."""
    from lm_eval.utils import handle_non_serializable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept = {key: value for key, value in results.items() if key != "samples"}
    (out / "results.json").write_text(json.dumps(kept, indent=1, default=handle_non_serializable) + "\n")
    (out / "summary.json").write_text(json.dumps(summarize(results), indent=1) + "\n")
    for task, rows in (results.get("samples") or {}).items():
        (out / f"samples_{task}.jsonl").write_text(
            "".join(json.dumps(row, default=handle_non_serializable) + "\n" for row in rows))
    return out


def item_scores(results: dict, metric: str) -> list[float]:
    """Every logged example's score over all the tasks run (`log_samples`): `metric` where a task reports it,
    else acc, else exact_match; what `tuna compare` pools into one figure with an interval over items."""
    names = list(dict.fromkeys([metric, "acc", "exact_match"]))
    scores = []
    for task, rows in results["samples"].items():
        name = next((n for n in names if rows and n in rows[0]), None)
        if name is None:
            raise UserError(f"harness task {task} reports none of {', '.join(names)}")
        scores += [float(row[name]) for row in rows]
    return scores
