"""The model card (README.md) of what a run produced: what it is, what it came from, how it was trained, how it ended.

Written into `final/` as training ends, and into merged exports and Hub uploads, from what the run
directory holds (config.yaml, summary.json, metrics.jsonl), so any finished run can get one again.
The front matter is the Hub's: `base_model` (the hub id the adapter names, `models.hub`; left out when
the base is a local directory, which the Hub would refuse), `library_name` (peft for an adapter,
transformers for a checkpoint), tags (tuna, the method, the objective) and the base's license when known.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from tuna import __version__, rundir
from tuna.atomic import atomic_write_text
from tuna.models.gguf_cache import EMBEDDED_FILE
from tuna.models.hub import hub_id, is_hub_id, license_of
from tuna.models.load import HUB_IDS

CARD = "README.md"
LOADERS = {"peft": "from peft import AutoPeftModelForCausalLM as Auto",
           "transformers": "from transformers import AutoModelForCausalLM as Auto"}


def write_model_card(run_dir: Path, folder: Path, summary: dict | None = None, *, merged: bool = False,
                     added: list[str] = (), location: str | None = None) -> Path:
    """Write the card of run `run_dir` into `folder` (what the card describes: `final/`, an export)."""
    path = Path(folder) / CARD
    atomic_write_text(path, model_card(run_dir, folder, summary, merged=merged, added=added, location=location))
    return path


def model_card(run_dir: Path, folder: Path, summary: dict | None = None, *, merged: bool = False,
               added: list[str] = (), location: str | None = None) -> str:
    """The card's text. `summary` defaults to the run's summary.json; `merged` says the folder is an export
    of the run merged into its base; `added` names sparse deltas added on top of it; `location` is where the
    usage example loads from (a Hub repo; unset, a placeholder)."""
    run_dir, folder = Path(run_dir), Path(folder)
    config = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    if summary is None:
        summary = json.loads((run_dir / rundir.SUMMARY).read_text()) if (run_dir / rundir.SUMMARY).is_file() else {}
    records = rundir.read_metrics(run_dir / rundir.METRICS) if (run_dir / rundir.METRICS).is_file() else []
    name, method, objective = config["model"]["name"], config["method"], config["objective"]
    base = hub_id(name)
    library = ("peft" if (folder / "adapter_config.json").is_file()
               else "transformers" if (folder / "config.json").is_file() else None)
    front: dict = {"base_model": base} if is_hub_id(base) else {}
    if library:
        front["library_name"] = library
    front["tags"] = ["tuna", method, objective]
    known_license = license_of(name)
    if known_license:
        front["license"] = known_license
    merged_change = merged and not (run_dir / rundir.FINAL / "config.json").is_file()  # a full fine-tune merges nothing
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", f"# {run_dir.name}", "",
             f"{what_it_is(library, base, merged_change)}, fine-tuned with tuna {__version__} (method `{method}`, "
             f"objective `{objective}`).", ""]
    if added:
        lines += [f"Sparse deltas added after the merge: {', '.join(f'`{d}`' for d in added)}.", ""]
    if library:
        where = location or "path/to/this/folder"
        lines += ["## Use", "```python", LOADERS[library], f'model = Auto.from_pretrained("{where}")', "```", ""]
    lines += ["## Training", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in training_rows(config, summary, name, base)]
    lines += evaluation_table(records)
    return "\n".join(lines) + "\n"


def what_it_is(library: str | None, base: str, merged: bool) -> str:
    """The card's first words: an adapter, a sparse delta, a merged checkpoint or a full fine-tune."""
    if library == "peft":
        return f"A PEFT adapter for `{base}`"
    if library is None:
        return (f"A sparse delta for `{base}`, in tuna's format (`tuna export RUN --merge OUT` adds it to the base "
                "as a transformers checkpoint)")
    return f"`{base}` with the trained change merged in: a plain transformers checkpoint" if merged else \
        f"A full fine-tune of `{base}`"


def training_rows(config: dict, summary: dict, name: str, base: str) -> list[tuple[str, str]]:
    method, objective = config["method"], config["objective"]
    origin = f" (tuna's embedded `{name}`: its {EMBEDDED_FILE}, dequantised)" if name in HUB_IDS else ""
    method_knobs = knobs_between(config, "method", "objective")
    objective_knobs = knobs_between(config, "objective", "init")
    rows = [("base model", f"`{base}`{origin}"),
            ("method", f"`{method}`" + (f": {method_knobs}" if method_knobs else "")),
            ("objective", f"`{objective}`" + (f": {objective_knobs}" if objective_knobs else "")),
            ("data", data_summary(config.get("data") or {}, summary)),
            ("steps", figure(summary.get("steps"))),
            ("tokens", figure(summary.get("tokens")))]
    if summary.get("total_params"):
        rows.append(("trainable parameters", f"{summary['trainable_params']:,} of {summary['total_params']:,}"))
    finals = {"final train loss": "train_loss", "final eval loss": "eval_loss", "final eval perplexity": "eval_ppl"}
    rows += [(label, figure(summary[key])) for label, key in finals.items() if summary.get(key) is not None]
    return rows


def knobs_between(config: dict, start: str, end: str) -> str:
    """The knobs of the sections config.yaml lists between the keys `start` and `end`: `Recipe.to_yaml` puts the
    sections a method reads right after `method`, and its objective's after `objective`."""
    keys = list(config)
    if start not in keys or end not in keys:
        return ""
    sections = [config[key] for key in keys[keys.index(start) + 1 : keys.index(end)]]
    listed = (", ".join(f"{key}={value}" for key, value in section.items() if value not in (None, [], {}))
              for section in sections if isinstance(section, dict))
    return "; ".join(filter(None, listed))


def data_summary(data: dict, summary: dict) -> str:
    files = [data["path"]] if data.get("path") else [source["path"] for source in data.get("sources") or []]
    parts = [", ".join(f"`{Path(f).name}`" for f in files) or "(not recorded)"]
    if summary.get("data"):
        parts.append(f"train {summary['data']}")
    if summary.get("eval_data"):
        held_out = data.get("eval_split")  # a fraction of the data, or a file of its own
        source = f" (`{Path(held_out).name}`)" if isinstance(held_out, str) else ""
        parts.append(f"eval {summary['eval_data']}{source}")
    if data.get("max_tokens"):
        parts.append(f"max_tokens {data['max_tokens']}")
    return "; ".join(parts)


def evaluation_table(records: list[dict]) -> list[str]:
    """Every held-out evaluation the run logged, one row per evaluation step."""
    evaluated = [r for r in records if any(key.startswith("eval/") for key in r)]
    if not evaluated:
        return []
    keys = list(dict.fromkeys(key for r in evaluated for key in r if key.startswith("eval/")))
    lines = ["", "## Evaluation", "| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join([str(r["step"])] + [figure(r.get(key)) for key in keys]) + " |" for r in evaluated]
    return lines


def figure(value) -> str:
    """A number as the card shows it: counts with thousands separators, measurements to 4 decimals."""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)
