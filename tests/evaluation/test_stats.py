"""Bootstrap intervals: degenerate inputs, coverage of the mean, seeds, sample size, pairing."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.evaluation import stats
from sdrt.evaluation.stats import bootstrap_ci, paired_difference


def bernoulli(n: int, p: float, seed: int) -> list[float]:
    return np.random.default_rng(seed).binomial(1, p, size=n).astype(float).tolist()


def test_constant_scores_give_zero_width_interval() -> None:
    assert bootstrap_ci([0.7] * 50) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interval_contains_the_mean(seed: int) -> None:
    scores = bernoulli(200, 0.6, seed)
    mean, low, high = bootstrap_ci(scores, seed=seed)
    assert mean == pytest.approx(np.mean(scores))
    assert low < mean < high


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    scores = np.random.default_rng(0).uniform(size=100).tolist()  # continuous, like ANLS
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    assert bootstrap_ci(scores, seed=3) != bootstrap_ci(scores, seed=4)


def test_width_shrinks_with_more_samples() -> None:
    _, low_small, high_small = bootstrap_ci(bernoulli(50, 0.6, 0))
    _, low_large, high_large = bootstrap_ci(bernoulli(5000, 0.6, 0))
    # Width goes as 1/sqrt(n): 100 times the items, about a tenth of the width.
    assert high_large - low_large < (high_small - low_small) / 5


def test_width_matches_the_normal_approximation() -> None:
    """For a mean of 1000 fair coin flips, 95% width is about 2 * 1.96 * sqrt(0.25 / 1000) = 0.062."""
    _, low, high = bootstrap_ci(bernoulli(1000, 0.5, 0), n_resamples=4000)
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 1000), rel=0.15)


def test_higher_confidence_gives_wider_interval() -> None:
    scores = bernoulli(300, 0.4, 0)
    _, low_90, high_90 = bootstrap_ci(scores, confidence=0.90)
    _, low_99, high_99 = bootstrap_ci(scores, confidence=0.99)
    assert low_99 < low_90 and high_90 < high_99


def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = bernoulli(40, 0.5, 0)
    whole = bootstrap_ci(scores, n_resamples=100)
    monkeypatch.setattr(stats, "_MAX_DRAWS_PER_CHUNK", 90)  # two rows of 40 at a time
    assert bootstrap_ci(scores, n_resamples=100) == whole


def test_paired_difference_of_identical_lists_is_exactly_zero() -> None:
    scores = bernoulli(100, 0.5, 0)
    assert paired_difference(scores, list(scores)) == (0.0, 0.0, 0.0)


def test_paired_difference_of_a_constant_shift() -> None:
    base = bernoulli(100, 0.5, 0)
    assert paired_difference([x + 0.25 for x in base], base) == pytest.approx((0.25, 0.25, 0.25))


def test_pairing_narrows_the_interval_for_correlated_systems() -> None:
    """Two systems that fail on the same hard items differ little item by item."""
    rng = np.random.default_rng(0)
    a = rng.binomial(1, 0.6, size=400).astype(float)
    b = a.copy()
    b[rng.choice(400, size=20, replace=False)] = 0.0  # b loses a few items a gets right
    diff_mean, diff_low, diff_high = paired_difference(a, b)
    _, a_low, a_high = bootstrap_ci(a)
    assert diff_mean == pytest.approx(np.mean(a - b))
    assert 0.0 < diff_low <= diff_mean <= diff_high
    assert diff_high - diff_low < (a_high - a_low) / 2


def test_paired_difference_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1.0, 0.0], [1.0])


@pytest.mark.parametrize(
    ("scores", "options"),
    [
        ([], {}),
        ([0.5, float("nan")], {}),
        ([[0.5, 1.0]], {}),
        ([0.5, 1.0], {"n_resamples": 0}),
        ([0.5, 1.0], {"confidence": 1.0}),
    ],
    ids=["empty", "nan", "nested", "no-resamples", "confidence-1"],
)
def test_bad_input_raises(scores: list, options: dict) -> None:
    with pytest.raises(ValueError):
        bootstrap_ci(scores, **options)
