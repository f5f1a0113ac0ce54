"""The layout of a run directory, shared by training (which writes it) and loading (which reads it)."""
from __future__ import annotations

import json
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
SUMMARY = "summary.json"


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / FINAL).is_dir()


def read_metrics(path: Path) -> list[dict]:
    """The records of a `metrics.jsonl`, one per step."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
