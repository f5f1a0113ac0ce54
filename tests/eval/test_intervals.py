import random

import pytest

from tuna.eval.intervals import bootstrap_interval, overlap, t_interval


def test_the_t_interval_uses_students_t_for_the_seed_count():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert high - mean == pytest.approx(4.303 * 1.0 / 3 ** 0.5)  # t(0.975, 2) * sd / sqrt(n)
    assert mean - low == pytest.approx(high - mean)


def test_the_t_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        low, high = t_interval([rng.gauss(5.0, 2.0) for _ in range(3)])[1:]
        hits += low <= 5.0 <= high
    assert 0.93 < hits / 2000 < 0.97


def test_the_bootstrap_interval_of_an_accuracy_matches_the_binomial_spread():
    scores = [1.0] * 40 + [0.0] * 60
    mean, low, high = bootstrap_interval(scores)
    se = (0.4 * 0.6 / 100) ** 0.5
    assert mean == 0.4
    assert low == pytest.approx(0.4 - 1.96 * se, abs=0.02) and high == pytest.approx(0.4 + 1.96 * se, abs=0.02)
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0, 1.0)


def test_overlap():
    assert overlap((0, 1), (1, 2)) and overlap((0, 3), (1, 2))
    assert not overlap((0, 1), (1.1, 2))
