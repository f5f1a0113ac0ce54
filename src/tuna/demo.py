"""`tuna demo`: fine-tune the embedded model on a generated task and show what it learned and forgot.

Every figure printed comes from this run: exact match on held-out prompts and general-text
perplexity (stdlib docstrings), both measured before and after a LoRA fine-tune on the CPU.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tuna.config import validate_recipe
from tuna.data.general_text import stdlib_docstrings
from tuna.data.render import render_records
from tuna.data.synthetic import date_task
from tuna.eval.generate import exact_match, generate
from tuna.data.scoring import heldout_loss
from tuna.models.load import load_any
from tuna.train.loop import train


@dataclass
class Scores:
    exact_match: float
    general_ppl: float


def score(model_spec: str, heldout: list[dict], general: list[dict]) -> Scores:
    model, tokenizer = load_any(model_spec)
    prompts = [row["messages"][:1] for row in heldout]
    predictions = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=32, progress=True)
    hits = sum(exact_match(p, row["answer"]) for p, row in zip(predictions, heldout))
    items, _ = render_records(general, "text", tokenizer, train_on="all", max_tokens=256, overflow="truncate")
    ppl = heldout_loss(model, items, batch_size=8, pad_id=tokenizer.pad_token_id, device=torch.device("cpu"))["ppl"]
    return Scores(hits / len(heldout), ppl)


def run_demo(output_dir: str | None = None, steps: int = 40, train_examples: int = 2000, heldout_examples: int = 200,
             seed: int = 0) -> dict:
    run_dir = Path(output_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(data_dir / "train.jsonl", date_task(train_examples, seed=seed))
    heldout = date_task(heldout_examples, seed=seed + 10_000)
    write_jsonl(data_dir / "heldout.jsonl", heldout)
    general = [{"text": t} for t in stdlib_docstrings()]
    recipe = validate_recipe({
        "model": "smollm2-135m", "method": "lora",
        "data": {"path": str(data_dir / "train.jsonl"), "eval_split": str(data_dir / "heldout.jsonl"), "max_tokens": 256},
        "train": {"max_steps": steps, "micro_batch_size": 8, "lr": 1e-3, "seed": seed, "save_every": 50},
        "eval": {"every": 0, "batch_size": 32},
        "output_dir": str(run_dir / "run"),
    })
    say = lambda msg: print(f"tuna demo: {msg}", file=sys.stderr)
    say("task: rewrite dates written in words as ISO 8601 (e.g. 'the 5th of March, 2021' -> 2021-03-05)")
    say(f"scoring the base model on {heldout_examples} held-out prompts and {len(general)} stdlib docstrings")
    started = time.perf_counter()
    before = score("smollm2-135m", heldout, general)
    say(f"fine-tuning with LoRA for {steps} steps of 8 examples on {train_examples} generated examples")
    result = train(recipe)
    say("scoring the fine-tuned model")
    after = score(result.run_dir, heldout, general)
    report = {"exact_match": {"before": before.exact_match, "after": after.exact_match},
              "general_ppl": {"before": before.general_ppl, "after": after.general_ppl},
              "train": {"steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 1)},
              "total_seconds": round(time.perf_counter() - started, 1), "run_dir": result.run_dir}
    (run_dir / "demo.json").write_text(json.dumps(report, indent=1))
    print_report(report, heldout_examples)
    return report


def print_report(report: dict, heldout_examples: int) -> None:
    em, ppl = report["exact_match"], report["general_ppl"]
    change = 100 * (ppl["after"] / ppl["before"] - 1)
    print()
    print(f"{'':34}{'before':>10}{'after':>10}")
    print(f"{f'exact match ({heldout_examples} held-out dates)':34}{em['before']:>10.1%}{em['after']:>10.1%}")
    print(f"{'general-text perplexity':34}{ppl['before']:>10.2f}{ppl['after']:>10.2f}   ({change:+.1f}%: forgetting)")
    t = report["train"]
    print(f"\ntrained {t['steps']} steps, {t['tokens']:,} tokens in {t['seconds']:.0f} s "
          f"({t['tokens'] / max(t['seconds'], 1e-9):.0f} tokens/s, model loading and evaluation included); "
          f"whole demo {report['total_seconds']:.0f} s")
    print(f"run directory: {report['run_dir']}  (try: tuna chat --model {report['run_dir']})")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
