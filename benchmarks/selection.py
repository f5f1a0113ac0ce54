"""IFD scoring speed: batched and length-sorted (how `tuna data select` scores) against one record at a time.

    python benchmarks/selection.py                 # 2,000 records on the embedded model, CPU
    python benchmarks/selection.py --records 200   # a quicker look

The records are the selection pool (examples/data/dates_pool.jsonl) repeated to the count asked for:
chat records of 80 to 600 tokens. Both runs compute the same two losses per record (the answer given
the question, the answer alone) with the same code (`selection.items.mean_losses`); only the batch size
differs. The IFD scores of the two runs must agree (checked), so the speed-up is not bought by skipping work.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

POOL = Path(__file__).resolve().parents[1] / "examples" / "data" / "dates_pool.jsonl"


def ifd_scores(model, items, pad_id: int, batch_size: int) -> tuple[list[float], float]:
    from tuna.selection import items as scoring

    started = time.perf_counter()
    given = scoring.mean_losses(model, items, pad_id=pad_id, batch_size=batch_size, progress=True,
                                desc=f"answer | question, batch {batch_size}")
    alone = scoring.mean_losses(model, [scoring.answer_alone(i) for i in items], pad_id=pad_id,
                                batch_size=batch_size, progress=True, desc=f"answer alone, batch {batch_size}")
    return [g / a for g, a in zip(given, alone)], time.perf_counter() - started


def main() -> None:
    from tuna.data.read import Records
    from tuna.models.load import load_base
    from tuna.selection import items as scoring

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    rows = [json.loads(line) for line in POOL.read_text().splitlines()]
    rows = [rows[i % len(rows)] for i in range(args.records)]
    model, tokenizer = load_base("smollm2-135m")
    items = scoring.rendered(Records(rows, [f"row {i}" for i in range(len(rows))]), tokenizer, 2048)
    torch.set_grad_enabled(False)
    batched, batched_s = ifd_scores(model, items, tokenizer.pad_token_id, args.batch_size)
    single, single_s = ifd_scores(model, items, tokenizer.pad_token_id, 1)
    worst = max(abs(a - b) for a, b in zip(batched, single))
    assert worst < 1e-3, f"batched and one-at-a-time IFD differ by {worst}"
    tokens = sum(len(i.input_ids) + i.target_count for i in items)
    print(f"IFD of {len(items)} records ({tokens:,} tokens scored) on the embedded model, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| scoring | seconds | records/s |")
    print("|---|---|---|")
    print(f"| batched ({args.batch_size}), length-sorted | {batched_s:.1f} | {len(items) / batched_s:.1f} |")
    print(f"| one record at a time | {single_s:.1f} | {len(items) / single_s:.1f} |")
    print(f"speed-up {single_s / batched_s:.2f}x; largest IFD difference between the two {worst:.2e}")


if __name__ == "__main__":
    main()
