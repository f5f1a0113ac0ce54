"""Needle in a haystack: can the model find facts hidden at a given depth of a long context?

The haystack is Python standard-library docstrings (`tuna.data.general_text`: shipped with Python,
nothing downloaded), cut so that the whole chat prompt is the requested number of tokens. Each needle
is "The special magic number for <word> is <number>." placed on a line of its own at the line
boundary nearest to the requested depth (0 = start of the text, 1 = its end). With k needles the
first sits at the requested depth and the rest are spread evenly from there towards the end. The
answer scores the fraction of the needles' numbers it contains.
"""
from __future__ import annotations

import itertools
import json
import random
import re
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from tuna.data.general_text import stdlib_docstrings
from tuna.data.render import chat_text
from tuna.errors import UserError

WORDS = ("apple", "harbour", "violin", "glacier", "lantern", "meadow", "falcon", "copper", "orchid", "canyon",
         "pepper", "velvet", "thunder", "marble", "willow", "compass", "saffron", "island", "comet", "anchor",
         "bamboo", "ember", "garnet", "kestrel", "lagoon", "nutmeg", "quartz", "raven", "summit", "tulip")
INTRO = "Read the text below and answer the question after it."
Answerer = Callable[[list[dict], int], str]  # (chat messages, max new tokens) -> reply


@dataclass
class Needle:
    word: str
    number: int

    @property
    def text(self) -> str:
        return f"The special magic number for {self.word} is {self.number}."


@dataclass
class Haystack:
    messages: list[dict]
    needles: list[Needle]
    depths: list[float]  # where each needle landed: the fraction of the filler tokens before it
    tokens: int  # the rendered prompt, generation prompt included


def answer_tokens(needle_count: int) -> int:
    """Room for the reply: enough for a sentence per needle."""
    return 16 * (needle_count + 1)


def question(needles: list[Needle]) -> str:
    if len(needles) == 1:
        return f"What is the special magic number for {needles[0].word} mentioned in the text?"
    words = ", ".join(n.word for n in needles[:-1]) + f" and {needles[-1].word}"
    return f"What are the special magic numbers for {words} mentioned in the text?"


@cache
def filler_text() -> str:
    """Every stdlib docstring `general_text` finds; reading them touches deprecated aliases such as typing.io."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return "\n\n".join(stdlib_docstrings(count=10_000))


def filler_ids(tokenizer, min_tokens: int) -> list[int]:
    """Docstring text as token ids, repeated if one pass is shorter than `min_tokens`."""
    ids = tokenizer(filler_text(), add_special_tokens=False).input_ids
    return ids * (min_tokens // len(ids) + 1)


def needle_depths(depth: float, count: int) -> list[float]:
    """The first needle at `depth`, the others evenly spaced from there towards the end."""
    return [depth + i * (1.0 - depth) / count for i in range(count)]


def make_needles(count: int, rng: random.Random) -> list[Needle]:
    if count > len(WORDS):
        raise UserError(f"at most {len(WORDS)} needles")
    words = rng.sample(WORDS, count)
    numbers = rng.sample(range(10_000, 100_000), count)
    return [Needle(w, n) for w, n in zip(words, numbers)]


def _prompt(document: str, needles: list[Needle]) -> list[dict]:
    return [{"role": "user", "content": f"{INTRO}\n\n{document}\n\n{question(needles)}"}]


def _count(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer(chat_text(tokenizer, messages, generation_prompt=True), add_special_tokens=False).input_ids)


def _nearest_line_start(text: str, char: int) -> int:
    starts = [0, len(text)] + [m.end() for m in re.finditer("\n", text)]
    return min(starts, key=lambda s: (abs(s - char), s))


def _insert(tokenizer, filler: str, needles: list[Needle], depths: list[float]) -> tuple[str, list[float]]:
    """`filler` with each needle on its own line near its depth, and the depths they landed at."""
    ids = tokenizer(filler, add_special_tokens=False).input_ids
    spots = [_nearest_line_start(filler, len(tokenizer.decode(ids[: round(d * len(ids))]))) for d in depths]
    landed = [len(tokenizer(filler[:s], add_special_tokens=False).input_ids) / max(len(ids), 1) for s in spots]
    text = filler
    for spot, _, needle in sorted(zip(spots, range(len(needles)), needles), key=lambda t: t[:2], reverse=True):
        text = text[:spot] + needle.text + "\n" + text[spot:] if spot < len(text) else text + "\n" + needle.text
    return text, landed


def build_haystack(tokenizer, length: int, depth: float, needles: list[Needle], filler: list[int]) -> Haystack:
    """A prompt of at most `length` tokens (a few short at worst) with `needles` hidden from `depth` on."""
    depths = needle_depths(depth, len(needles))
    bare = _count(tokenizer, _prompt("\n".join(n.text for n in needles), needles))
    budget = length - bare
    if budget < 16:
        raise UserError(f"length {length} is too short: the question and needles alone take {bare} tokens")
    while True:
        document, landed = _insert(tokenizer, tokenizer.decode(filler[:budget]), needles, depths)
        messages = _prompt(document, needles)
        tokens = _count(tokenizer, messages)
        if tokens <= length:
            return Haystack(messages, needles, landed, tokens)
        budget -= tokens - length  # joins between filler and needle can tokenize a little longer


def score_answer(answer: str, needles: list[Needle]) -> float:
    """The fraction of the needles' numbers that appear in the answer as whole numbers."""
    found = set(re.findall(r"\d+", answer))
    return sum(str(n.number) in found for n in needles) / len(needles)


def check_lengths(lengths: list[int], window: int, needle_count: int) -> None:
    room = answer_tokens(needle_count)
    too_long = [n for n in lengths if n + room > window]
    if too_long:
        raise UserError(f"length {too_long[0]} is beyond the model's context window of {window} tokens "
                        f"(config max_position_embeddings; {room} more are kept for the answer); use shorter "
                        "lengths or extend the window with model.rope_scaling")


def model_answerer(model, tokenizer) -> Answerer:
    from tuna.eval.generate import generate

    return lambda messages, max_new_tokens: generate(model, tokenizer, [messages], max_new_tokens=max_new_tokens)[0]


def run_grid(tokenizer, answer: Answerer, lengths: list[int], depths: list[float], *, needles: int = 1,
             trials: int = 1, seed: int = 0, progress: bool = True) -> dict:
    """Accuracy per (depth, length) cell, averaged over `trials` haystacks with fresh needles each."""
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise UserError(f"depths must be fractions in [0, 1], got {depths}")
    filler = filler_ids(tokenizer, max(lengths))
    cells, accuracy = [], [[0.0] * len(lengths) for _ in depths]
    grid = list(itertools.product(enumerate(lengths), enumerate(depths), range(trials)))
    for (li, length), (di, depth), trial in tqdm(grid, desc="needle", disable=not progress):
        rng = random.Random(f"{seed}:{length}:{depth}:{trial}")
        hay = build_haystack(tokenizer, length, depth, make_needles(needles, rng), filler)
        reply = answer(hay.messages, answer_tokens(needles))
        score = score_answer(reply, hay.needles)
        accuracy[di][li] += score / trials
        cells.append({"length": length, "depth": depth, "trial": trial, "tokens": hay.tokens,
                      "needle_depths": [round(d, 4) for d in hay.depths], "numbers": [n.number for n in hay.needles],
                      "answer": reply, "score": score})
    return {"settings": {"lengths": lengths, "depths": depths, "needles": needles, "trials": trials, "seed": seed},
            "accuracy": accuracy, "cells": cells}


def format_grid(result: dict) -> str:
    lengths = result["settings"]["lengths"]
    lines = ["depth \\ length" + "".join(f"{n:>8}" for n in lengths)]
    for depth, row in zip(result["settings"]["depths"], result["accuracy"]):
        lines.append(f"{depth:<14g}" + "".join(f"{a:>8.0%}" for a in row))
    return "\n".join(lines)


def plot_heatmap(result: dict, path: Path) -> None:
    """Accuracy by length (x) and depth (y), each cell annotated; no pyplot, so no global backend state."""
    from matplotlib.figure import Figure

    lengths, depths = result["settings"]["lengths"], result["settings"]["depths"]
    fig = Figure(figsize=(1.2 * len(lengths) + 3, 0.6 * len(depths) + 2))
    ax = fig.add_subplot()
    image = ax.imshow(result["accuracy"], cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for di, row in enumerate(result["accuracy"]):
        for li, value in enumerate(row):
            ax.text(li, di, f"{value:.0%}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    settings = result["settings"]
    needles = f"{settings['needles']} needle" + ("s" if settings["needles"] > 1 else "")
    ax.set_title(f"needle in a haystack: {settings.get('model', '')} ({needles})")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_results(result: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "needle.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_heatmap(result, out / "needle.png")
    return out
