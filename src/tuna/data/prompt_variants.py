"""PAFT, Prompt-Agnostic Fine-Tuning ("PAFT: Prompt-Agnostic Fine-Tuning"): at every step, each training
example is seen under an instruction drawn from a set of paraphrases, so the model learns the task
rather than one wording of it.

`data.prompt_variants` names a file of instructions (a JSON list of strings, or one per line). The
record's own instruction is one of the candidates: the `instruction` field of instruction records, or
the leading system turn of chat records. Every candidate's version of every training example is
rendered once, before training; at each step the batches draw, per example, which version they use,
from a generator seeded by the run's seed and the step's data position, so a resumed run draws the
same ones. The held-out split keeps the records' own instructions.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tuna.data.formats import detect_format
from tuna.errors import UserError


def read_variants(path: str | Path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"data.prompt_variants: file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    try:
        variants = json.loads(text)
    except ValueError:
        variants = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(variants, list) or not variants or not all(isinstance(v, str) and v.strip() for v in variants):
        raise UserError(f"data.prompt_variants: {path} must hold a list of non-empty instruction strings")
    return variants


def with_instruction(record: dict, fmt: str, instruction: str, index: int) -> dict:
    if fmt == "instruction":
        return {**record, "instruction": instruction}
    messages = record["messages"]
    if not messages or messages[0].get("role") != "system":
        raise UserError(f"record {index + 1}: data.prompt_variants replaces a chat record's leading system turn, "
                        "and this record has none")
    return {**record, "messages": [{"role": "system", "content": instruction}, *messages[1:]]}


def variant_records(records: list[dict], fmt: str, variants: list[str]) -> list[list[dict]]:
    """The records as they are, then once per variant instruction."""
    fmt = detect_format(records) if fmt == "auto" else fmt
    if fmt not in ("instruction", "messages"):
        raise UserError(f"data.prompt_variants needs instruction records, or chat records with a system turn, not "
                        f"{fmt!r}")
    return [list(records)] + [[with_instruction(r, fmt, v, i) for i, r in enumerate(records)] for v in variants]


def choices(seed: int, epoch: int, cursor: int, count: int, candidates: int) -> list[int]:
    """Which version each of a micro-batch's `count` examples takes, fixed by the seed and data position."""
    generator = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + cursor) % 2**63)
    return torch.randint(candidates, (count,), generator=generator).tolist()
