"""The label-free reliability estimate: it must find the strong prompt that a majority outvotes."""

from __future__ import annotations

import random

import pytest

from sdrt.reasoning.ensemble import Candidate, fixed_weight_vote, get_strategy, majority_vote
from sdrt.reasoning.reliability import estimate_reliability


def simulate(accuracies: dict[str, float], classes: int, n: int, seed: int = 0):
    """Independent prompts: right with their accuracy, otherwise a uniformly random wrong class."""
    rng = random.Random(seed)
    truths, examples = [], []
    for _ in range(n):
        truth = rng.randrange(classes)
        candidates = []
        for prompt_id, p in accuracies.items():
            answer = truth if rng.random() < p else rng.choice([c for c in range(classes) if c != truth])
            candidates.append(Candidate(prompt_id, f"answer{answer}", -1.0))
        truths.append(f"answer{truth}")
        examples.append(candidates)
    return truths, examples


ACCURACIES = {"strong": 0.92, "a": 0.55, "b": 0.5, "c": 0.5, "d": 0.45}


def test_estimated_accuracies_match_the_simulated_ones() -> None:
    # Better than chance throughout, so the likelihood pins every accuracy down. (Beside prompts
    # at chance level a strong prompt's accuracy is only weakly identified and drifts towards 1;
    # its vote wins either way, as the next test checks.)
    accuracies = {"strong": 0.9, "a": 0.7, "b": 0.65, "c": 0.6, "d": 0.6}
    _, examples = simulate(accuracies, classes=4, n=3000)
    fit = estimate_reliability(examples)
    for prompt_id, p in accuracies.items():
        assert fit.accuracy[prompt_id] == pytest.approx(p, abs=0.03), prompt_id
    assert fit.alternatives == pytest.approx(3.0, abs=0.3)  # four classes: three wrong ones


def test_reliability_vote_beats_majority_when_one_prompt_is_strong() -> None:
    truths, examples = simulate(ACCURACIES, classes=3, n=2000, seed=1)
    fit = estimate_reliability(examples)

    def accuracy(vote) -> float:
        return sum(vote(ex).normalized == t for ex, t in zip(examples, truths, strict=True)) / len(truths)

    assert accuracy(fit.vote) > accuracy(majority_vote) + 0.05
    assert accuracy(fit.vote) >= 0.9  # about the strong prompt's own accuracy, or better


def test_yes_no_answers_give_one_alternative_and_open_answers_many() -> None:
    _, yes_no = simulate({"p": 0.8, "q": 0.7, "r": 0.75}, classes=2, n=2000, seed=2)
    _, open_ = simulate({"p": 0.8, "q": 0.7, "r": 0.75}, classes=12, n=2000, seed=3)
    assert estimate_reliability(yes_no).alternatives == pytest.approx(1.0, abs=0.15)
    assert estimate_reliability(open_).alternatives > 6


def test_weights_are_non_negative_and_a_chance_level_prompt_gets_none() -> None:
    _, examples = simulate({"good": 0.9, "other": 0.8, "noise": 0.5}, classes=2, n=3000, seed=4)
    fit = estimate_reliability(examples)
    assert all(w >= 0 for w in fit.vote_weights.values())
    assert fit.vote_weights["noise"] < 0.15 * fit.vote_weights["good"]


def test_empty_answers_abstain_and_missing_prompts_are_allowed() -> None:
    examples = [
        [Candidate("a", "yes", -1.0), Candidate("b", "", -1.0)],
        [Candidate("a", "no", -1.0), Candidate("b", "no", -1.0)],
        [Candidate("a", "yes", -1.0)],
    ]
    fit = estimate_reliability(examples)
    assert set(fit.accuracy) == {"a", "b"}
    assert fit.vote(examples[0]).normalized == "yes"


def test_no_examples_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one example"):
        estimate_reliability([])


def test_fixed_weights_must_cover_every_prompt_and_be_non_negative() -> None:
    candidates = [Candidate("a", "yes", -1.0), Candidate("b", "no", -1.0)]
    with pytest.raises(ValueError, match="no vote weight"):
        fixed_weight_vote(candidates, {"a": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        fixed_weight_vote(candidates, {"a": 1.0, "b": -0.5})
    result = fixed_weight_vote(candidates, {"a": 1.0, "b": 3.0})
    assert result.normalized == "no"
    assert result.prompt_weights == {"a": 0.0, "b": 1.0}


def test_reliability_is_not_a_per_example_strategy() -> None:
    with pytest.raises(KeyError, match="whole dataset"):
        get_strategy("reliability")
