"""metrics.jsonl: one JSON line per optimizer step; the source of truth for every plot and report."""
from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        self._fh = path.open("a")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
