"""Evaluation metrics, LongBench-style: each scores one record's output against its reference fields.

A metric names the reference fields it reads (`needs`), so data that cannot support it is refused
before the model is loaded. Scores are per example in [0, 1]; a run reports their mean. Metrics
over several gold answers take the best match, as LongBench does.

Two kinds of output are scored. `generate` metrics score the generated answer (a string).
`choice` metrics score no generated text: the record's `choices` are ranked by their log-likelihood
as continuations of the prompt (`tuna.eval.choices`), and the metric reads that ranking. A metric
whose per-example mean is not the standard figure (BLEU) also names a corpus-level score.
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable

from tuna.errors import UserError

NORMALIZE_STEPS = ("lower", "punct", "articles", "whitespace")  # SQuAD's normalisation, in its order
NORMALIZED = ("qa_f1", "exact_match")  # the metrics `--normalize` applies to


@dataclass(frozen=True)
class Metric:
    name: str
    summary: str
    needs: tuple[str, ...]  # reference fields every record must carry
    score: Callable[[Any, dict], float]  # (output, reference fields) -> score in [0, 1]
    kind: str = "generate"  # output scored: "generate" = the answer text, "choice" = the ranking of the choices
    corpus: Callable[[list[str], list[dict]], float] | None = None  # (all answers, all references) -> corpus score


def parse_normalization(text: str) -> tuple[str, ...]:
    """'lower,punct' -> ('lower', 'punct'); 'none' -> ()."""
    steps = [part.strip() for part in text.split(",") if part.strip()]
    if steps == ["none"]:
        return ()
    unknown = [s for s in steps if s not in NORMALIZE_STEPS]
    if unknown or not steps:
        raise UserError(f"--normalize takes a comma list of {', '.join(NORMALIZE_STEPS)}, or none; got {text!r}")
    return tuple(s for s in NORMALIZE_STEPS if s in steps)


def normalizer(steps: tuple[str, ...] = NORMALIZE_STEPS) -> Callable[[str], str]:
    """The chosen SQuAD steps, always in SQuAD's order. Articles match in any case, so they go without `lower` too."""
    def normalize(text: str) -> str:
        if "lower" in steps:
            text = text.lower()
        if "punct" in steps:
            text = "".join(ch for ch in text if ch not in string.punctuation)
        if "articles" in steps:
            text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.IGNORECASE)
        if "whitespace" in steps:
            text = " ".join(text.split())
        return text

    return normalize


normalize_answer = normalizer()


def token_f1(prediction: str, gold: str, normalize: Callable[[str], str] = normalize_answer) -> float:
    predicted, expected = normalize(prediction).split(), normalize(gold).split()
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


def sentence_bleu(prediction: str, golds: list[str]) -> float:
    """sacrebleu's sentence BLEU against all gold answers at once (exp smoothing, effective order), in [0, 1]."""
    import sacrebleu

    return min(1.0, sacrebleu.sentence_bleu(prediction, golds).score / 100)


def corpus_bleu(predictions: list[str], references: list[dict]) -> float:
    """sacrebleu's corpus BLEU, in [0, 1]: n-gram counts pooled over the corpus. Records with fewer gold
    answers than others fill the missing reference streams with None, which sacrebleu skips."""
    import sacrebleu

    width = max(len(ref["answers"]) for ref in references)
    streams = [[ref["answers"][k] if k < len(ref["answers"]) else None for ref in references] for k in range(width)]
    return min(1.0, sacrebleu.corpus_bleu(predictions, streams).score / 100)


def without_fences(text: str) -> str:
    """The text inside a ```json fence that wraps the whole answer; the text itself when there is none."""
    match = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, flags=re.DOTALL)
    return match.group(1) if match else text


def json_valid(prediction: str, reference: dict | None = None) -> float:
    """1 if the answer parses as JSON, a ```json fence around the whole answer dropped first (GRPO's `json` reward too)."""
    try:
        json.loads(without_fences(prediction))
    except ValueError:
        return 0.0
    return 1.0


def classification_score(prediction: str, gold: str, all_classes: list[str]) -> float:
    """LongBench's rule: of the class names found in the prediction (ignoring those that are only part of
    the gold name), the gold must be one; naming several classes splits the credit among them."""
    named = [c for c in all_classes if c in prediction and not (c in gold and c != gold)]
    return 1.0 / len(named) if gold in named else 0.0


def _best(pair_score: Callable[[str, str], float]) -> Callable[[str, dict], float]:
    return lambda prediction, ref: max(pair_score(prediction, gold) for gold in ref["answers"])


def _classification(prediction: str, ref: dict) -> float:
    return max(classification_score(prediction, gold, ref["all_classes"]) for gold in ref["answers"])


def _normalized_metrics(normalize: Callable[[str], str]) -> list[Metric]:
    return [
        Metric("qa_f1", "token F1 after normalisation (default: lowercase, no punctuation or articles)", ("answers",),
               _best(lambda p, g: token_f1(p, g, normalize))),
        Metric("exact_match", "normalised answer equals a gold answer", ("answers",),
               _best(lambda p, g: float(normalize(p) == normalize(g)))),
    ]


_QA_F1, _EXACT_MATCH = _normalized_metrics(normalize_answer)
METRICS = {m.name: m for m in [
    _QA_F1,
    Metric("rouge_l", "ROUGE-L F-measure (rouge-score package)", ("answers",), _best(rouge_l_f)),
    _EXACT_MATCH,
    Metric("bleu", "sentence BLEU against all gold answers (sacrebleu); corpus BLEU as corpus_bleu", ("answers",),
           lambda prediction, ref: sentence_bleu(prediction, ref["answers"]), corpus=corpus_bleu),
    Metric("classification", "the gold class is among the class names the prediction contains",
           ("answers", "all_classes"), _classification),
    Metric("json_valid", "the answer parses as JSON (a ```json fence is dropped)", (), json_valid),
    Metric("mc_accuracy", "the choice with the highest summed log-prob is the gold one (lm-eval-harness acc)",
           ("choices", "answer"), lambda ranking, ref: float(ranking["predicted"] == ref["answer"]), kind="choice"),
    Metric("mc_accuracy_norm", "the same, by log-prob per character of the choice (lm-eval-harness acc_norm)",
           ("choices", "answer"), lambda ranking, ref: float(ranking["predicted_norm"] == ref["answer"]),
           kind="choice"),
]}


def get_metrics(names: list[str], normalize: tuple[str, ...] = NORMALIZE_STEPS) -> list[Metric]:
    """The named metrics, in the order first named; qa_f1 and exact_match use the `normalize` steps."""
    if not names:
        raise UserError(f"name at least one metric: {', '.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UserError(f"unknown metric {', '.join(map(repr, unknown))}; use one of {', '.join(METRICS)}")
    bound = {m.name: m for m in _normalized_metrics(normalizer(normalize))}
    return [bound.get(n, METRICS[n]) for n in dict.fromkeys(names)]
