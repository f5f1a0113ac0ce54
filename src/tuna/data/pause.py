"""Pause-tuning (Begin et al., 2025): pause markers between the segments of long inputs.

Fine-tuning on inputs cut into segments by a pause marker redistributes attention over long
contexts and counters lost-in-the-middle. Only the input side of a record changes (system, user
and tool messages, `prompt`, `instruction` and `input`); what the model is trained to answer never
does. A segment closes at the first paragraph break (a blank line) once it holds `every` tokens, so
pauses never split a paragraph, and an input shorter than `every` tokens is left as it is.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from tuna.data.formats import detect_format
from tuna.errors import UserError

PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t\r]*\n)+")  # one or more blank lines
INPUT_ROLES = ("system", "user", "tool")
INPUT_FIELDS = {"instruction": ("instruction", "input"), "prompt_completion": ("prompt",)}


@dataclass
class PauseStats:
    inserted: int = 0
    examples: int = 0

    def summary(self) -> str:
        return f"{self.inserted} pauses inserted in {self.examples} examples"


def insert_pauses(text: str, tokenizer, every: int, marker: str) -> tuple[str, int]:
    """`text` with `marker` at each paragraph break that closes a segment of >= `every` tokens."""
    # Tokenize once; a segment's tokens are those whose first character lies inside it.
    starts = [start for start, _ in tokenizer(text, add_special_tokens=False,
                                               return_offsets_mapping=True)["offset_mapping"]]
    pieces, cut = [], 0
    for brk in PARAGRAPH_BREAK.finditer(text):
        if brk.end() == len(text):
            break  # a trailing blank line: no segment follows it
        if bisect.bisect_left(starts, brk.start()) - bisect.bisect_left(starts, cut) >= every:
            pieces.append(text[cut:brk.end()] + marker + brk.group())
            cut = brk.end()
    return "".join(pieces) + text[cut:], len(pieces)


def add_pauses(records: list[dict], fmt: str, tokenizer, cfg) -> tuple[list[dict], PauseStats]:
    """`records` with pauses in their inputs (`cfg` is a `PauseConfig`; no record is changed in place)."""
    fmt = detect_format(records) if fmt == "auto" else fmt
    if fmt == "text":
        raise UserError("data.pause_tokens goes into the input side of an example, and plain `text` data has none; "
                        "use prompt_completion, instruction or messages data, or remove data.pause_tokens")
    stats = PauseStats()

    def paused(mapping: dict, key: str) -> dict:
        if not isinstance(mapping.get(key), str):
            return mapping  # a malformed record: rendering names the problem
        text, count = insert_pauses(mapping[key], tokenizer, cfg.every, cfg.text)
        stats.inserted += count
        return {**mapping, key: text}

    out = []
    for record in records:
        before = stats.inserted
        if fmt == "messages" and isinstance(record.get("messages"), list):
            record = {**record, "messages": [paused(m, "content") if isinstance(m, dict) and m.get("role") in INPUT_ROLES
                                             else m for m in record["messages"]]}
        for key in INPUT_FIELDS.get(fmt, ()):
            record = paused(record, key)
        stats.examples += stats.inserted > before
        out.append(record)
    return out, stats
