"""Procedurally generated tasks, seeded, so demos and tests need no downloaded data.

`date_task`: rewrite a date written in words ("the 5th of March, 2021", "Fri, Mar 5 2021") as ISO
8601 (2021-03-05). The answer is exact and checkable, the embedded model gets few right before
fine-tuning, and the mapping is learnable from a few hundred examples.
`arithmetic_task`: small sums and differences, answered with the number only (for GRPO).
"""
from __future__ import annotations

import calendar
import datetime as dt
import random

INSTRUCTION = "Rewrite the date in ISO 8601 format (YYYY-MM-DD). Reply with the date only."


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _spell(date: dt.date, style: int) -> str:
    month, abbr = calendar.month_name[date.month], calendar.month_abbr[date.month]
    weekday, wd_abbr = calendar.day_name[date.weekday()], calendar.day_abbr[date.weekday()]
    return [
        f"{month} {date.day}, {date.year}",
        f"{date.day} {month} {date.year}",
        f"the {_ordinal(date.day)} of {month}, {date.year}",
        f"{weekday}, {month} {_ordinal(date.day)} {date.year}",
        f"{wd_abbr}, {abbr} {date.day} {date.year}",
        f"{abbr}. {_ordinal(date.day)}, {date.year}",
    ][style]


STYLES = 6


def date_task(count: int, seed: int) -> list[dict]:
    """`count` examples in `messages` format; each also carries its `answer` for exact-match scoring."""
    rng = random.Random(seed)
    first, span = dt.date(1950, 1, 1).toordinal(), 365 * 100
    rows = []
    for _ in range(count):
        date = dt.date.fromordinal(first + rng.randrange(span))
        question = f"{INSTRUCTION}\n\nDate: {_spell(date, rng.randrange(STYLES))}"
        answer = date.isoformat()
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                     "answer": answer})
    return rows


ARITHMETIC = "Reply with the number only."


def arithmetic_task(count: int, seed: int, largest: int = 20) -> list[dict]:
    """Sums and differences of numbers up to `largest`, in `messages` format, with the `answer` a reward checks.

    Verifiable and format-sensitive: the embedded model often computes right but wraps the number in
    a sentence, which exact match scores 0, so a reward-driven objective has a signal to follow.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(1, largest), rng.randint(1, largest)
        op = rng.choice("+-")
        answer = str(a + b if op == "+" else a - b)
        question = f"What is {a} {op} {b}? {ARITHMETIC}"
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                     "answer": answer})
    return rows
