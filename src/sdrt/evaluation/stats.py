"""Uncertainty beside every score: percentile bootstrap intervals for a mean and a paired difference.

Benchmarks here are small enough (hundreds to a few thousand items) that a gain of a point or two
can be noise; an interval says whether it is. Comparing two systems on the same items uses the
paired difference, which removes the per-item difficulty both systems share.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_difference"]

# Resampled indices held in memory at once; large benchmarks are resampled in chunks of rows.
_MAX_DRAWS_PER_CHUNK = 1_000_000


def _as_scores(scores: Sequence[float], name: str) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty flat sequence of numbers")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinity")
    return values


def _check_options(n_resamples: int, confidence: float) -> None:
    problems = []
    if n_resamples < 1:
        problems.append(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        problems.append(f"confidence must lie in (0, 1), got {confidence}")
    if problems:
        raise ValueError("; ".join(problems))


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` samples drawn with replacement, each as large as ``values``."""
    n = values.size
    rows_per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_resamples)
        indices = rng.integers(0, n, size=(stop - start, n))  # (rows, n)
        means[start:stop] = values[indices].mean(axis=1)
    return means


def _percentile_interval(
    values: np.ndarray, n_resamples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    if np.all(values == values[0]):
        # Every resample is the same multiset: report the value itself, free of rounding.
        constant = float(values[0])
        return constant, constant, constant
    means = _resampled_means(values, n_resamples, np.random.default_rng(seed))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(values.mean()), float(low), float(high)


def bootstrap_ci(
    scores: Sequence[float], *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-item scores with its percentile bootstrap interval: ``(mean, low, high)``.

    The same seed gives the same interval. Constant scores give a zero-width interval.
    """
    _check_options(n_resamples, confidence)
    return _percentile_interval(_as_scores(scores, "scores"), n_resamples, confidence, seed)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``a - b`` with its paired bootstrap interval: ``(mean, low, high)``.

    ``a[i]`` and ``b[i]`` must score the same item, in the same order: items are resampled
    together, so an interval that excludes 0 means a real difference on these items. Only the
    lengths can be checked here; unequal lengths raise ``ValueError``.
    """
    _check_options(n_resamples, confidence)
    a_values, b_values = _as_scores(a, "a"), _as_scores(b, "b")
    if a_values.size != b_values.size:
        raise ValueError(
            f"paired scores need the same items in the same order; got {a_values.size} and {b_values.size}"
        )
    return _percentile_interval(a_values - b_values, n_resamples, confidence, seed)
