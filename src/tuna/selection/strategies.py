"""The selection strategies, each as its paper defines it, and their chaining.

A strategy gets the candidates (indices into the pool), the budget and a `Context` (the rendered
items, the scorer, cached scores) and returns the indices it keeps, best first. Model scores are
computed once per record and kept in `Context.scores`, so they can be saved and reused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from tuna.errors import UserError
from tuna.selection import items as scoring


@dataclass
class Context:
    rendered: list  # Rendered items of the whole pool
    pad_id: int
    seed: int = 0
    load_model: Callable | None = None  # () -> the scorer model, loaded on first use
    batch_size: int = 8
    progress: bool = False
    order: str = "low"  # perplexity: keep the lowest or the highest
    length_min: int = 0  # length: the window of whole rendered lengths, in tokens
    length_max: int | None = None
    lobass_steps: int = 20
    lobass_slice: float = 0.1
    lobass_lr: float = 5e-5
    scores: dict[str, list[float]] = field(default_factory=dict)  # strategy -> one score per pool record
    notes: list[str] = field(default_factory=list)
    _model: object = None

    def model(self):
        if self._model is None:
            self._model = self.load_model()
        return self._model

    def losses(self, items: list, desc: str) -> list[float]:
        return scoring.mean_losses(self.model(), items, pad_id=self.pad_id, batch_size=self.batch_size,
                                   progress=self.progress, desc=desc)


def top(candidates: list[int], budget: int, score: list[float], highest: bool = True) -> list[int]:
    """The `budget` candidates with the highest (or lowest) scores; ties keep pool order."""
    return sorted(candidates, key=lambda i: (-score[i] if highest else score[i], i))[:budget]


def random_pick(candidates: list[int], budget: int, ctx: Context) -> list[int]:
    """"Rethinking Data Selection at Scale": the baseline that is hard to beat."""
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(ctx.seed)).tolist()
    return [candidates[i] for i in order[:budget]]


def answer_tokens(ctx: Context) -> list[float]:
    return [float(item.target_count) for item in ctx.rendered]


def longest(candidates: list[int], budget: int, ctx: Context) -> list[int]:
    """"Long Is More for Alignment": the longest responses (answer tokens)."""
    ctx.scores.setdefault("longest", answer_tokens(ctx))
    return top(candidates, budget, ctx.scores["longest"])


def length_window(candidates: list[int], budget: int, ctx: Context) -> list[int]:
    """Records whose whole rendered length is within [length_min, length_max]; a seeded sample of them
    when more than the budget fit."""
    fits = [i for i in candidates if ctx.length_min <= len(ctx.rendered[i].input_ids) <= (ctx.length_max or math.inf)]
    return random_pick(fits, budget, ctx)


def conditioned_losses(ctx: Context) -> list[float]:
    if "perplexity" not in ctx.scores:
        ctx.scores["perplexity"] = [math.exp(min(loss, 50.0)) for loss in ctx.losses(ctx.rendered, "select: answer | question")]
    return [math.log(p) for p in ctx.scores["perplexity"]]


def ifd(candidates: list[int], budget: int, ctx: Context) -> list[int]:
    """Cherry LLM's Instruction-Following Difficulty: mean answer loss given the question over mean answer
    loss alone. IFD ≥ 1 (the question does not help) is dropped; the highest of the rest are kept.
    Scored by `--model`, which may be a small model scoring for a large one (Superfiltering)."""
    if not all(scoring.has_question(item) for item in ctx.rendered):
        raise UserError("ifd needs records with a question and an answer (text records have no question)")
    if "ifd" not in ctx.scores:
        given = conditioned_losses(ctx)
        alone = ctx.losses([scoring.answer_alone(item) for item in ctx.rendered], "select: answer alone")
        ctx.scores["ifd"] = [g / a if a > 0 else math.inf for g, a in zip(given, alone)]
    kept = [i for i in candidates if ctx.scores["ifd"][i] < 1]
    if len(kept) < len(candidates):
        ctx.notes.append(f"ifd: {len(candidates) - len(kept)} records with IFD ≥ 1 dropped")
    return top(kept, budget, ctx.scores["ifd"])


def perplexity(candidates: list[int], budget: int, ctx: Context) -> list[int]:
    """The lowest (or, with --order high, the highest) answer perplexity given the question."""
    conditioned_losses(ctx)
    return top(candidates, budget, ctx.scores["perplexity"], highest=ctx.order == "high")


def k_center(vectors: torch.Tensor, candidates: list[int], budget: int, first: int) -> list[int]:
    """Greedy k-center: start at `first`, then each time the candidate farthest from everything chosen."""
    points = vectors[candidates]
    chosen = [candidates.index(first)]
    distance = torch.cdist(points, points[chosen[-1]:chosen[-1] + 1]).squeeze(1)
    while len(chosen) < min(budget, len(candidates)):
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, torch.cdist(points, points[chosen[-1]:chosen[-1] + 1]).squeeze(1))
    return [candidates[i] for i in chosen]


def diversity(candidates: list[int], budget: int, ctx: Context) -> list[int]:
    """Greedy k-center on mean-pooled last hidden states, from a seeded first pick."""
    if "embedding" not in ctx.scores:
        ctx.scores["embedding"] = scoring.embeddings(ctx.model(), ctx.rendered, pad_id=ctx.pad_id,
                                                     batch_size=ctx.batch_size, progress=ctx.progress).tolist()
    first = random_pick(candidates, 1, ctx)[0]
    return k_center(torch.tensor(ctx.scores["embedding"]), candidates, budget, first)


def lobass(candidates: list[int], budget: int, ctx: Context) -> list[int]:
    """LoBaSS learnability: (loss before − loss after) / loss before, the losses of the scorer before and
    after a short fine-tune on a random slice of the pool; the most learnable are kept."""
    if "lobass" not in ctx.scores:
        before = conditioned_losses(ctx)
        size = max(1, round(ctx.lobass_slice * len(ctx.rendered)))
        slice_ = torch.randperm(len(ctx.rendered), generator=torch.Generator().manual_seed(ctx.seed)).tolist()[:size]
        tuned = scoring.short_fine_tune(ctx.model(), [ctx.rendered[i] for i in slice_], pad_id=ctx.pad_id,
                                        steps=ctx.lobass_steps, batch_size=ctx.batch_size, lr=ctx.lobass_lr,
                                        seed=ctx.seed, progress=ctx.progress)
        after = scoring.mean_losses(tuned, ctx.rendered, pad_id=ctx.pad_id, batch_size=ctx.batch_size,
                                    progress=ctx.progress, desc="select: loss after")
        ctx.scores["lobass"] = [(b - a) / b if b > 0 else 0.0 for b, a in zip(before, after)]
    return top(candidates, budget, ctx.scores["lobass"])


STRATEGIES: dict[str, Callable[[list[int], int, Context], list[int]]] = {
    "random": random_pick, "longest": longest, "length": length_window, "ifd": ifd, "perplexity": perplexity,
    "diversity": diversity, "lobass": lobass}
NEEDS_MODEL = {"ifd", "perplexity", "diversity", "lobass"}


def parse_chain(text: str) -> list[str]:
    chain = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [s for s in chain if s not in STRATEGIES]
    if not chain or unknown:
        raise UserError(f"unknown strategy {(unknown or [text])[0]!r}; use one of {', '.join(STRATEGIES)}, or "
                        "several joined by commas")
    return chain


def run_chain(chain: list[str], budget: int, ctx: Context) -> list[int]:
    """Every strategy but the last keeps twice the budget for the next; the last keeps the budget."""
    candidates = list(range(len(ctx.rendered)))
    for position, name in enumerate(chain):
        keep = budget if position == len(chain) - 1 else 2 * budget
        candidates = STRATEGIES[name](candidates, keep, ctx)
    return candidates
