"""LongBench-style metrics against values computed by hand."""
import pytest

from tuna.errors import UserError
from tuna.eval.scorers import METRICS, classification_score, get_metrics, normalize_answer, rouge_l_f, token_f1


def test_normalisation_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("  The Cat, sat\n on  AN old mat! ") == "cat sat on old mat"


def test_token_f1_of_overlapping_token_sets():
    # prediction {cat, sat, on, mat} vs gold {cat, on, mat}: P = 3/4, R = 1, F1 = 2PR/(P+R) = 6/7
    assert token_f1("The cat sat on the mat.", "a cat on a mat") == pytest.approx(6 / 7)
    # tokens count per occurrence: x x y and x x z share two x, so P = R = 2/3 (a set would share only one)
    assert token_f1("x x y", "x x z") == pytest.approx(2 / 3)
    assert token_f1("dog", "cat") == 0.0


def test_qa_f1_takes_the_best_gold_answer():
    ref = {"answers": ["dog", "a cat on a mat"]}
    assert METRICS["qa_f1"].score("The cat sat on the mat.", ref) == pytest.approx(6 / 7)


def test_rouge_l_of_a_known_longest_common_subsequence():
    # same six words, but the longest common subsequence is "the cat sat" (or "on the mat"): 3 of 6 each way
    assert rouge_l_f("on the mat the cat sat", "the cat sat on the mat") == pytest.approx(0.5)
    # LCS "the cat on mat": 4 of 6 tokens each way
    assert METRICS["rouge_l"].score("the cat lay on a mat", {"answers": ["zzz", "the cat sat on the mat"]}) == pytest.approx(2 / 3)


def test_exact_match_is_normalised():
    em = METRICS["exact_match"].score
    assert em("The Paris.", {"answers": ["paris"]}) == 1.0
    assert em("Paris, France", {"answers": ["paris"]}) == 0.0


def test_classification_rule():
    classes = ["positive", "negative", "neutral"]
    assert classification_score("negative", "negative", classes) == 1.0
    assert classification_score("It is positive or negative", "negative", classes) == 0.5  # credit split between two
    assert classification_score("positive", "negative", classes) == 0.0
    # a class that is only part of the gold name does not count against it
    assert classification_score("Person name", "Person name", ["Person", "Person name", "Place"]) == 1.0
    assert METRICS["classification"].needs == ("answers", "all_classes")


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(UserError, match="unknown metric 'bleu'.*qa_f1, rouge_l, exact_match, classification"):
        get_metrics(["qa_f1", "bleu"])
    assert [m.name for m in get_metrics(["rouge_l", "qa_f1", "rouge_l"])] == ["rouge_l", "qa_f1"]
    with pytest.raises(UserError, match="name at least one metric"):
        get_metrics([])
