"""RFT, rejection-sampling fine-tuning ("Scaling Relationship on Learning Mathematical Reasoning with Large
Language Models"): SFT on the gold answers plus the model's own correct, distinct answers.

Before training, the starting model samples `rft.samples` answers to every training prompt (KV-cached,
batched, at `rft.temperature`). The reward functions of `rft.judge` (summed) score each against the
record, as S3FT's judge does; an answer reaching `rft.accept_at` is correct. An answer whose text is
the gold answer's adds nothing; the others are deduplicated per prompt (`rft.dedupe`): by their
normalised text (every distinct reasoning path, closer to the paper's distinct equation lists), or by
the final answer that `rft.answer_pattern` extracts (at most one sample per distinct final answer;
for a task with one right answer, one sample per prompt). Training is then plain
SFT on every gold record followed by its kept samples. The held-out split is untouched.

Every sample and verdict goes to `rft.jsonl` in the run directory; a resumed run reads them back
instead of sampling again (when they were made for the same records).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from tuna.data.formats import answer_of, with_answer
from tuna.data.kinds import SEQUENCES
from tuna.data.prompts import render_prompts
from tuna.data.read import Records
from tuna.models.generate import generate_ids
from tuna.objectives import sft
from tuna.objectives.base import Objective
from tuna.objectives.own_answers import answered_format, verdicts_once
from tuna.objectives.rewards import RewardKnobs, check_records, score

SAMPLES = "rft.jsonl"


class RftKnobs(RewardKnobs):
    samples: int = Field(4, ge=1, le=100, description="answers sampled per training prompt (the paper's k)")
    temperature: float = Field(0.7, gt=0.0, description="sampling temperature (the paper: 0.7)")
    max_new_tokens: int = Field(256, ge=1, description="longest sampled answer")
    judge: list[str] = Field(["exact_match"], min_length=1, description="reward functions (built-in names or "
                             "module:function) that judge a sampled answer; their sum is its score")
    accept_at: float = Field(1.0, description="a sampled answer whose score reaches this is correct")
    dedupe: Literal["answer", "text"] = Field("text", description="keep one correct sample per distinct final "
                                                                 "answer (answer_pattern) or per distinct text")


def normalised(text: str) -> str:
    return " ".join(text.split())


def dedupe_key(text: str, knobs: RftKnobs) -> str:
    if knobs.dedupe == "answer" and knobs.answer_pattern:
        found = re.search(knobs.answer_pattern, text, flags=re.DOTALL)
        if found:
            return normalised(found.group(1) if found.groups() else found.group(0))
    return normalised(text)


def sample_and_judge(records: list[dict], fmt: str, model, tokenizer, knobs: RftKnobs, errors, *, max_tokens: int,
                     batch_size: int) -> list[dict]:
    """Per record: its index, its gold answer, each sample with its score, and the samples kept."""
    judged = [{"answer": answer_of(r, fmt), **r} for r in records]
    check_records(knobs.judge, judged)
    items, _ = render_prompts(judged, fmt, tokenizer, max_tokens=max_tokens)
    items = sorted(items, key=lambda item: len(item.input_ids))
    verdicts = []
    per_batch = max(1, batch_size // knobs.samples)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(items), per_batch), desc="rft: sampling", leave=False):
        chunk = items[start : start + per_batch]
        ids = generate_ids(model, [item.input_ids for item in chunk], sample=True, group=knobs.samples,
                           temperature=knobs.temperature, max_new_tokens=knobs.max_new_tokens,
                           pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
        texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        owners = [chunk[i // knobs.samples] for i in range(len(texts))]
        scores = score(knobs.judge, [1.0] * len(knobs.judge), texts, [o.record for o in owners],
                       [o.index for o in owners], knobs, errors)
        for k, item in enumerate(chunk):
            mine = list(zip(texts, scores))[k * knobs.samples : (k + 1) * knobs.samples]
            gold = answer_of(item.record, fmt)
            seen, kept = set(), []
            for text, value in mine:  # the gold answer is kept anyway: a sample that copies it adds nothing
                key = dedupe_key(text, knobs)
                if text and value >= knobs.accept_at and normalised(text) != normalised(gold) and key not in seen:
                    seen.add(key)
                    kept.append(text)
            verdicts.append({"index": item.index, "gold": gold, "kept": kept,
                             "samples": [{"text": t, "score": v} for t, v in mine]})
    return sorted(verdicts, key=lambda v: v["index"])


def rewrite_train(records: list[dict], knobs: RftKnobs, model, tokenizer, *, data_format: str, max_tokens: int,
                  batch_size: int, run_dir: Path, errors, resume: bool = False, say=print) -> tuple[Records, str]:
    """Every gold record followed by its kept samples (as records with the sample as the answer), and a note."""
    fmt = answered_format(records, data_format, "rft")
    path = Path(run_dir) / SAMPLES
    verdicts = verdicts_once(path, records, fmt, lambda: sample_and_judge(
        records, fmt, model, tokenizer, knobs, errors, max_tokens=max_tokens, batch_size=batch_size),
        resume=resume, say=say, what="rft: samples")
    kept = {v["index"]: v["kept"] for v in verdicts}
    origins = getattr(records, "origins", [f"record {i + 1}" for i in range(len(records))])
    out, out_origins = [], []
    for i, record in enumerate(records):
        out.append(record)
        out_origins.append(origins[i])
        for j, text in enumerate(kept.get(i, [])):
            out.append(with_answer(record, fmt, text))
            out_origins.append(f"{origins[i]} (sampled answer {j + 1})")
    added = len(out) - len(records)
    with_any = sum(bool(k) for k in kept.values())
    note = (f"rft added {added} correct distinct samples to {len(records)} gold records ({with_any} prompts had one; "
            f"{knobs.samples} sampled per prompt; in {path})")
    return Records(out, out_origins), note


OBJECTIVE = Objective(name="rft", summary="rejection sampling: SFT on gold answers plus the model's own correct, "
                                          "distinct sampled answers (rft.*)",
                      paper="Scaling Relationship on Learning Mathematical Reasoning with Large Language Models (RFT)",
                      kind=SEQUENCES, loss=sft.loss, knobs=RftKnobs, chunked_loss=True, rewrite_train=rewrite_train)
