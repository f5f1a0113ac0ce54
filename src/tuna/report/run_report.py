"""report.html of one run, built only from what the run directory holds.

metrics.jsonl is the source of truth, so a report can be rewritten at any time, for a finished,
interrupted or still-running run. Every numeric series is plotted, so objectives that log their own
keys (`rewards/margins`, `eval/reward`) need nothing here.
"""
from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path

import yaml

from tuna import rundir
from tuna.atomic import atomic_write_text
from tuna.report.html import figure, figures, note, page, pre, section, table
from tuna.report.plots import line_chart

REPORT = "report.html"
NOT_SERIES = ("step", "epoch")
FIRST_CHARTS = ("loss", "lr", "grad_norm", "tokens_per_s")  # then the others, in the order they were first logged
LOG_SCALE = ("ppl",)
PACKAGES = ("torch", "transformers", "peft", "tuna")


def write_run_report(run_dir: Path, *, device: str | None = None) -> Path:
    """Write `run_dir/report.html` (atomically) and return its path.

    `device` is the device the run trained on; the loop knows it, a later rewrite does not.
    """
    run_dir = Path(run_dir)
    config_text = _read(run_dir / rundir.CONFIG) or ""
    config = yaml.safe_load(config_text) or {}
    records = rundir.read_metrics(run_dir / rundir.METRICS) if (run_dir / rundir.METRICS).exists() else []
    summary_text = _read(run_dir / rundir.SUMMARY)
    summary = json.loads(summary_text) if summary_text else None
    series = numeric_series(records)
    blocks = [
        section("Summary", table(["", ""], summary_rows(config, summary, records), id="summary")),
        section("Curves", curves(series, len(records))),
        section("Logged series", series_table(series) if series else note("nothing was logged")),
        section("Config", pre(config_text) if config_text else note(f"no {rundir.CONFIG} in the run directory")),
        section("Environment", table(["", ""], environment(device, config), id="environment")),
    ]
    path = run_dir / REPORT
    atomic_write_text(path, page(f"tuna run {run_dir.name}", blocks))
    return path


def numeric_series(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """{key: [(step, value), ...]} for every finite number logged, in first-logged order."""
    series: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in NOT_SERIES or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                series.setdefault(key, []).append((record["step"], value))
    return series


def chart_groups(keys: list[str]) -> dict[str, list[str]]:
    """Keys that measure the same thing share a chart: `train/loss` with `eval/loss`, `rewards/margins` with
    `eval/rewards/margins`. Named by that shared part, the usual ones first."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        base = key.split("/", 1)[1] if key.startswith(("train/", "eval/")) else key
        groups.setdefault(base, []).append(key)
    order = sorted(groups, key=lambda b: FIRST_CHARTS.index(b) if b in FIRST_CHARTS else len(FIRST_CHARTS))
    return {base: groups[base] for base in order}


def curves(series: dict[str, list[tuple[float, float]]], steps: int) -> str:
    if steps < 2:
        return note(f"{steps} step(s) logged: too few for curves; the values are in the tables")
    charts = [figure(line_chart({key: series[key] for key in keys}, title=base, xlabel="step", ylabel=base,
                                logy=base in LOG_SCALE), ", ".join(keys))
              for base, keys in chart_groups(list(series)).items()]
    return figures(charts)


def series_table(series: dict[str, list[tuple[float, float]]]) -> str:
    rows = []
    for key, points in series.items():
        values = [v for _, v in points]
        rows.append([key, len(points), values[0], values[-1], min(values), max(values)])
    return table(["series", "points", "first", "last", "min", "max"], rows)


def summary_rows(config: dict, summary: dict | None, records: list[dict]) -> list[list]:
    """What ran and how it ended. Without summary.json (a run still going, or one that crashed) the last
    logged step stands in."""
    last = records[-1] if records else {}
    sections = {key: config.get(key) or {} for key in ("model", "train")}
    rows = [["model", sections["model"].get("name")], ["method", config.get("method")],
            ["objective", config.get("objective")]]
    if summary is None:
        rows += [["status", "no summary.json: running, or stopped by a crash"], ["steps", last.get("step", 0)],
                 ["tokens", last.get("train/tokens")]]
    else:
        status = f"interrupted at step {summary['steps']}" if summary.get("interrupted") else "finished"
        share = summary["trainable_params"] / summary["total_params"] if summary["total_params"] else 0.0
        rows += [["status", status], ["steps", summary["steps"]], ["tokens", summary["tokens"]],
                 ["training time (since the last start)", duration(summary["seconds"])],
                 ["trainable parameters", f"{summary['trainable_params']:,} of {summary['total_params']:,} "
                                          f"({100 * share:.2f}%)"],
                 ["peak memory (MiB)", summary["peak_memory_mb"]]]
        rows += [["warning", warning] for warning in summary.get("warnings", [])]
    throughput = sorted(r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r)
    rows += [["tokens per second (median step)", throughput[len(throughput) // 2] if throughput else None],
             ["final train loss", last.get("train/loss")]]
    rows += [[f"final {key}", value] for key, value in _last_values(records, "eval/").items()]
    return rows


def environment(device: str | None, config: dict) -> list[list]:
    if device is None:
        device = f"{(config.get('train') or {}).get('device', 'auto')} (as configured)"
    rows = [["python", platform.python_version()]]
    for package in PACKAGES:
        try:
            rows.append([package, metadata.version(package)])
        except metadata.PackageNotFoundError:
            rows.append([package, "not installed"])
    return rows + [["platform", platform.platform()], ["device", device]]


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def _last_values(records: list[dict], prefix: str) -> dict:
    values = {}
    for record in records:
        values.update({k: v for k, v in record.items() if k.startswith(prefix)})
    return values


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None
