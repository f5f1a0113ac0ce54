"""`tuna data decontaminate`: drop training records that share a long word n-gram with an evaluation record.

As in the GPT-3 and Llama reports, text is compared as lower-cased words (runs of letters and digits),
and a training record is contaminated when it contains any `n`-word sequence (13 by default) of an
evaluation record. An evaluation record shorter than `n` words is matched whole (its full word
sequence inside a training record) when it has at least `SHORTEST` words; shorter ones are too short
to tell a leak from a coincidence and are reported as unchecked. Each dropped record names the
evaluation record it overlaps.
"""
from __future__ import annotations

import re

from tuna.data.dedup import record_text
from tuna.data.read import Records
from tuna.errors import UserError

SHORTEST = 8  # GPT-3's smallest n for short benchmarks


def words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[0-9a-z]+", text.lower()))


def grams(sequence: tuple[str, ...], n: int) -> set[tuple[str, ...]]:
    return {sequence[i:i + n] for i in range(len(sequence) - n + 1)}


def contaminated(train: Records, evals: list[Records], n: int = 13) -> tuple[list[int], list[dict], int]:
    """(indices kept, one entry per dropped record: its index, the evaluation record it overlaps, the n-gram;
    how many evaluation records were too short to check)."""
    if n < 1:
        raise UserError("the n-gram length must be at least 1")
    seen: dict[tuple[str, ...], str] = {}  # an evaluation n-gram (or a short record's words) -> its origin
    unchecked = 0
    for records in evals:
        for record, origin in zip(records, records.origins):
            sequence = words(record_text(record))
            if len(sequence) < min(n, SHORTEST):
                unchecked += 1
                continue
            for gram in grams(sequence, min(n, len(sequence))):
                seen.setdefault(gram, origin)
    if not seen:
        raise UserError(f"the evaluation data holds no record of {min(n, SHORTEST)} words or more to compare against")
    lengths = sorted({len(g) for g in seen})
    kept, dropped = [], []
    for i, record in enumerate(train):
        sequence = words(record_text(record))
        hit = next((g for length in lengths for g in grams(sequence, length) if g in seen), None)
        if hit is None:
            kept.append(i)
        else:
            dropped.append({"index": i, "overlaps": seen[hit], "ngram": " ".join(hit)})
    return kept, dropped, unchecked
