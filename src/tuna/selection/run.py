"""Read the pool, select, and write the kept records as they were written (atomically), with the scores.

Scores file (`--scores-out`): JSON lines, a first line naming the data (its sha256) and the scorer,
then one line per record (its file and line, and each score computed so far). When the file exists
and names the same data and scorer, its scores are reused and only missing ones are computed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from tuna.atomic import atomic_write_jsonl
from tuna.data.fingerprint import file_digest
from tuna.data.read import read_raw
from tuna.errors import UserError
from tuna.selection.strategies import NEEDS_MODEL, Context, parse_chain, run_chain
from tuna.selection import items as scoring


def parse_budget(text: str, pool: int) -> int:
    """`N` records or `P%` of the pool (rounded, at least 1 when P > 0)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", str(text))
    if match is None:
        raise UserError(f"budget {text!r} is not a count (200) or a share of the pool (20%)")
    number, share = float(match[1]), bool(match[2])
    budget = int(number) if not share else max(1, round(number * pool / 100)) if number > 0 else 0
    if budget < 1:
        raise UserError("the budget must keep at least one record")
    if budget > pool:
        raise UserError(f"the budget ({budget}) is larger than the pool ({pool} records)")
    return budget


def select_records(data: str | Path, strategy: str, budget: str, out: str | Path, *, model: str = "smollm2-135m",
                   scores_out: str | Path | None = None, seed: int = 0, max_tokens: int = 2048,
                   batch_size: int = 8, progress: bool = True, **knobs) -> dict:
    """Select from `data` into `out`; returns a summary (kept, pool, notes)."""
    from tuna.models.load import load_base, load_tokenizer, resolve

    chain = parse_chain(strategy)
    records = read_raw(data)
    if not records:
        raise UserError(f"{data}: the dataset is empty")
    count = parse_budget(budget, len(records))
    tokenizer = load_tokenizer(resolve(model))
    ctx = Context(rendered=scoring.rendered(records, tokenizer, max_tokens), pad_id=tokenizer.pad_token_id, seed=seed,
                  load_model=lambda: load_base(model)[0], batch_size=batch_size, progress=progress, **knobs)
    identity = {"data": file_digest(Path(data)), "scorer": model, "max_tokens": max_tokens}
    if scores_out is not None:
        ctx.scores.update(saved_scores(Path(scores_out), identity, len(records)))
    kept = run_chain(chain, count, ctx)
    if scores_out is not None and set(chain) & (NEEDS_MODEL | {"longest"}):
        write_scores(Path(scores_out), identity, records.origins, ctx.scores)
    chosen = sorted(kept)  # in the pool's order
    atomic_write_jsonl(Path(out), (records[i] for i in chosen))
    if len(chosen) < count:
        ctx.notes.append(f"only {len(chosen)} records qualified for a budget of {count}")
    return {"kept": len(chosen), "pool": len(records), "budget": count, "strategy": ",".join(chain),
            "notes": ctx.notes}


def saved_scores(path: Path, identity: dict, size: int) -> dict[str, list]:
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    try:
        header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    except (json.JSONDecodeError, IndexError):
        raise UserError(f"{path} is not a scores file written by tuna data select") from None
    if {k: header.get(k) for k in identity} != identity or len(rows) != size:
        return {}  # other data or another scorer: scored afresh, and the file rewritten
    return {name: [row[name] for row in rows] for name in rows[0] if name != "origin"} if rows else {}


def write_scores(path: Path, identity: dict, origins: list[str], scores: dict[str, list]) -> None:
    atomic_write_jsonl(path, [identity, *({"origin": origin, **{name: values[i] for name, values in scores.items()}}
                                          for i, origin in enumerate(origins))])
