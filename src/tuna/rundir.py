"""The layout of a run directory, shared by training (which writes it) and loading (which reads it),
and the care a run directory needs: a directory of the user's is never taken over, leftovers of a
killed write are cleared, a log with no checkpoint behind it is set aside, a finished run is left alone.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
SUMMARY = "summary.json"


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / FINAL).is_dir()


def holds_tuna_files(path: Path) -> bool:
    """A directory that is empty, or that a tuna run wrote (possibly one that crashed early)."""
    return not any(path.iterdir()) or any((path / name).exists() for name in (CONFIG, METRICS, CHECKPOINTS))


def read_metrics(path: Path) -> list[dict]:
    """The records of a `metrics.jsonl`, one per step. A last line cut short by a kill is left out."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise
    return records


def clear_leftovers(run_dir: Path) -> list[str]:
    """Remove the temporary directories of writes a kill cut short (`checkpoints/.step-*`, `.final-*`)."""
    leftovers = [*(run_dir / CHECKPOINTS).glob(".step-*"), *run_dir.glob(f".{FINAL}-*")]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return [str(path) for path in leftovers]


def set_aside_stale_log(run_dir: Path) -> str | None:
    """A metrics log of an attempt that crashed before its first checkpoint is renamed, so the new run starts
    clean; returns its new name."""
    log = run_dir / METRICS
    if not log.is_file():
        return None
    stale = log.with_name(f"{METRICS}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    log.rename(stale)
    return str(stale)


def finished_summary(run_dir: Path, max_steps: int | None) -> dict | None:
    """The summary of a run that completed, when asking for `max_steps` (None: as configured) adds nothing."""
    summary_path = run_dir / SUMMARY
    if not ((run_dir / FINAL).is_dir() and summary_path.is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError:
        return None
    if summary.get("interrupted", True) or (max_steps is not None and max_steps > summary.get("steps", 0)):
        return None
    return summary
