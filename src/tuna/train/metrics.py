"""metrics.jsonl: one JSON line per optimizer step; the source of truth for every plot and report."""
from __future__ import annotations

import json
from pathlib import Path

from tuna.rundir import read_metrics


class MetricsLog:
    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():  # a last line cut short by a kill is dropped
            kept = [json.dumps(r) for r in read_metrics(path) if r["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        self._fh = path.open("a")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
