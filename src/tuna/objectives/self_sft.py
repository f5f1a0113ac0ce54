"""S3FT, Selective Self-to-Supervised Fine-Tuning: train on the model's own answer where it is already right.

Before training, the starting model answers every training prompt (greedy, KV-cached, batched). A
judge (the reward functions of `self_sft.judge`, summed) scores each answer against the record; an
answer scoring at least `self_sft.accept_at` replaces the gold response, and the rest keep theirs.
Training is then plain SFT. Staying close to its own wording where that is correct is what limits
the drift SFT causes on general abilities. The held-out split keeps its gold responses, so the eval
loss measures the task as given.

The judge compares against the record's `answer` when it has one, else its gold response. The
paper has a middle option that tuna omits: a model paraphrase of the gold answer, tried before the
gold answer itself (docs/objectives.md). Every judgement goes to `self_sft.jsonl` in the
run directory, and a resumed run reads them back instead of generating again.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tuna.data.formats import answer_of, with_answer
from tuna.data.kinds import SEQUENCES
from tuna.data.prompts import render_prompts
from tuna.models.generate import greedy_batches
from tuna.objectives import sft
from tuna.objectives.base import Objective
from tuna.objectives.own_answers import answered_format, verdicts_once
from tuna.objectives.rewards import RewardKnobs, check_records, score

JUDGEMENTS = "self_sft.jsonl"


class SelfSftKnobs(RewardKnobs):
    judge: list[str] = Field(["exact_match"], min_length=1, description="reward functions (built-in names or "
                             "module:function) that judge the model's own response; their sum is its score")
    accept_at: float = Field(1.0, description="a response whose score reaches this replaces the gold response")
    max_new_tokens: int = Field(256, ge=1, description="longest generated response")


def judge_own_responses(records: list[dict], fmt: str, model, tokenizer, knobs, errors, *, max_tokens: int,
                        batch_size: int, progress: bool = True) -> list[dict]:
    """One judgement per record: its index, the model's greedy response, the judge's score, accepted or not.
    A prompt longer than `max_tokens` is not answered (it keeps its gold response)."""
    judged = [{"answer": answer_of(r, fmt), **r} for r in records]  # a record's own `answer` wins
    check_records(knobs.judge, judged)
    items, _ = render_prompts(judged, fmt, tokenizer, max_tokens=max_tokens)
    items = sorted(items, key=lambda item: len(item.input_ids))  # similar lengths share a batch: less padding
    judgements = []
    for start, texts in greedy_batches(model, tokenizer, [item.input_ids for item in items],
                                       max_new_tokens=knobs.max_new_tokens, batch_size=batch_size,
                                       progress=progress, desc="self_sft: own responses"):
        chunk, texts = items[start : start + len(texts)], [t.strip() for t in texts]
        scores = score(knobs.judge, [1.0] * len(knobs.judge), texts, [item.record for item in chunk],
                       [item.index for item in chunk], knobs, errors)
        for item, text, value in zip(chunk, texts, scores):
            judgements.append({"index": item.index, "gold": answer_of(item.record, fmt), "response": text,
                               "score": value, "accepted": bool(value >= knobs.accept_at and text)})
    return sorted(judgements, key=lambda j: j["index"])


def apply_judgements(records: list[dict], fmt: str, judgements: list[dict]) -> list[dict]:
    """Records with every accepted response in place of the gold one; the others unchanged."""
    accepted = {j["index"]: j["response"] for j in judgements if j["accepted"]}
    return [with_answer(r, fmt, accepted[i]) if i in accepted else r for i, r in enumerate(records)]


def rewrite_train(records: list[dict], knobs: SelfSftKnobs, model, tokenizer, *, data_format: str, max_tokens: int,
                  batch_size: int, run_dir: Path, errors, resume: bool = False, say=print) -> tuple[list[dict], str]:
    """The training records S3FT trains on, and a note of how many it replaced. A resumed run reuses
    the judgements saved by its first start; a new run always judges afresh."""
    fmt = answered_format(records, data_format, "self_sft")
    path = Path(run_dir) / JUDGEMENTS
    judgements = verdicts_once(path, records, fmt, lambda: judge_own_responses(
        records, fmt, model, tokenizer, knobs, errors, max_tokens=max_tokens, batch_size=batch_size),
        resume=resume, say=say, what="self_sft: judgements")
    replaced = sum(j["accepted"] for j in judgements)
    note = f"self_sft replaced {replaced} of {len(records)} gold responses with the model's own (judged in {path})"
    return apply_judgements(records, fmt, judgements), note


OBJECTIVE = Objective(name="self_sft", summary="SFT on the model's own responses where a judge accepts them, gold "
                                               "responses elsewhere (self_sft.*)",
                      paper="Selective Self-to-Supervised Fine-Tuning for Generalization in Large Language Models",
                      kind=SEQUENCES, loss=sft.loss, knobs=SelfSftKnobs, chunked_loss=True, rewrite_train=rewrite_train)
