"""Generation metrics, LongBench-style: each scores one prediction against a record's reference fields.

A metric names the reference fields it reads (`needs`), so data that cannot support it is refused
before anything is generated. Scores are per example in [0, 1]; a run reports their mean. Metrics
over several gold answers take the best match, as LongBench does. New metrics (BLEU, multiple
choice, JSON validity) are one `Metric` entry each: a function and the fields it needs (none, for
JSON validity).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Callable

from tuna.errors import UserError


@dataclass(frozen=True)
class Metric:
    name: str
    summary: str
    needs: tuple[str, ...]  # reference fields every record must carry
    score: Callable[[str, dict], float]  # (prediction, reference fields) -> score in [0, 1]


def normalize_answer(text: str) -> str:
    """SQuAD/LongBench normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l_f(prediction: str, gold: str) -> float:
    return _rouge_scorer().score(gold, prediction)["rougeL"].fmeasure


def classification_score(prediction: str, gold: str, all_classes: list[str]) -> float:
    """LongBench's rule: of the class names found in the prediction (ignoring those that are only part of
    the gold name), the gold must be one; naming several classes splits the credit among them."""
    named = [c for c in all_classes if c in prediction and not (c in gold and c != gold)]
    return 1.0 / len(named) if gold in named else 0.0


def _best(pair_score: Callable[[str, str], float]) -> Callable[[str, dict], float]:
    return lambda prediction, ref: max(pair_score(prediction, gold) for gold in ref["answers"])


def _classification(prediction: str, ref: dict) -> float:
    return max(classification_score(prediction, gold, ref["all_classes"]) for gold in ref["answers"])


METRICS = {m.name: m for m in [
    Metric("qa_f1", "token F1 after normalisation (lowercase, no punctuation or articles)", ("answers",),
           _best(token_f1)),
    Metric("rouge_l", "ROUGE-L F-measure (rouge-score package)", ("answers",), _best(rouge_l_f)),
    Metric("exact_match", "normalised prediction equals a gold answer", ("answers",),
           _best(lambda p, g: float(normalize_answer(p) == normalize_answer(g)))),
    Metric("classification", "the gold class is among the class names the prediction contains",
           ("answers", "all_classes"), _classification),
]}


def get_metrics(names: list[str]) -> list[Metric]:
    if not names:
        raise UserError(f"name at least one metric: {', '.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UserError(f"unknown metric {', '.join(map(repr, unknown))}; use one of {', '.join(METRICS)}")
    return [METRICS[n] for n in dict.fromkeys(names)]
