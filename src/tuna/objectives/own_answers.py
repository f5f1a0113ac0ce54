"""What S3FT and RFT share: they judge the starting model's own answers to the training prompts once,
before training, and keep the verdicts in the run directory so that a resumed run reads them back.

A verdict file is JSONL, one line per record with at least its `index` and its `gold` answer; it is
reused only when every verdict's gold answer still matches its record (other data: judge afresh).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from tuna.atomic import atomic_write_jsonl
from tuna.data.formats import answer_of, detect_format
from tuna.errors import UserError


def answered_format(records: list[dict], data_format: str, objective: str) -> str:
    """The records' format, which must pair prompts with gold answers."""
    fmt = detect_format(records) if data_format == "auto" else data_format
    if fmt not in ("messages", "instruction", "prompt_completion"):
        raise UserError(f"objective {objective} needs prompts with gold responses (messages, instruction or "
                        f"prompt_completion data), not {fmt!r}")
    return fmt


def verdicts_once(path: Path, records: list[dict], fmt: str, judge: Callable[[], list[dict]], *, resume: bool,
                  say, what: str) -> list[dict]:
    """The saved verdicts when resuming and they fit these records; else `judge()`'s, saved atomically."""
    verdicts = saved_verdicts(path, records, fmt) if resume else None
    if verdicts is not None:
        say(f"{what} read from {path}")
        return verdicts
    verdicts = judge()
    atomic_write_jsonl(path, verdicts)
    return verdicts


def saved_verdicts(path: Path, records: list[dict], fmt: str) -> list[dict] | None:
    if not path.is_file():
        return None
    verdicts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if any(v["index"] >= len(records) or v["gold"] != answer_of(records[v["index"]], fmt) for v in verdicts):
        return None
    return verdicts
