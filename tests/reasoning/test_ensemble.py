import math

import pytest

from sdrt.reasoning.ensemble import (
    ENSEMBLE_STRATEGIES,
    Candidate,
    get_strategy,
    loglik_weighted_vote,
    majority_vote,
)


def cand(prompt_id: str, answer: str, logprob: float, mean: float | None = None) -> Candidate:
    return Candidate(prompt_id=prompt_id, answer=answer, logprob=logprob, mean_logprob=mean)


# Two prompts agree on "2" with low confidence; one is very sure of "3".
CONFIDENT_OUTLIER = [
    cand("p1", "Two", -4.0, -2.0),
    cand("p2", "2", -5.0, -2.5),
    cand("p3", "three", -0.1, -0.05),
]


@pytest.mark.parametrize("vote", list(ENSEMBLE_STRATEGIES.values()))
def test_weights_sum_to_one_and_cover_every_prompt(vote) -> None:
    result = vote(CONFIDENT_OUTLIER)
    assert set(result.prompt_weights) == {"p1", "p2", "p3"}
    assert math.isclose(sum(result.prompt_weights.values()), 1.0)


def test_majority_merges_surface_forms_and_keeps_the_best_surface() -> None:
    result = majority_vote(CONFIDENT_OUTLIER)
    assert result.normalized == "2"
    assert result.answer == "Two"  # higher log-likelihood than "2"
    assert result.agreement == pytest.approx(2 / 3)
    assert result.votes == {"2": 2.0, "3": 1.0}


def test_majority_gives_equal_weight_to_agreeing_and_zero_to_others() -> None:
    weights = majority_vote(CONFIDENT_OUTLIER).prompt_weights
    assert weights == {"p1": 0.5, "p2": 0.5, "p3": 0.0}


def test_confident_outlier_wins_under_loglik_but_not_majority() -> None:
    assert majority_vote(CONFIDENT_OUTLIER).normalized == "2"
    result = loglik_weighted_vote(CONFIDENT_OUTLIER)
    assert result.normalized == "3"
    assert result.answer == "three"
    assert result.prompt_weights == {"p1": 0.0, "p2": 0.0, "p3": 1.0}
    assert result.agreement == pytest.approx(1 / 3)


def test_high_temperature_approaches_majority() -> None:
    assert loglik_weighted_vote(CONFIDENT_OUTLIER, temperature=100.0).normalized == "2"


def test_loglik_weights_are_proportional_to_confidence_within_the_winning_group() -> None:
    candidates = [cand("a", "cat", -1.0, -0.1), cand("b", "Cat.", -3.0, -0.7), cand("c", "dog", -2.0, -2.0)]
    weights = loglik_weighted_vote(candidates).prompt_weights
    assert weights["c"] == 0.0
    assert weights["a"] / weights["b"] == pytest.approx(math.exp(-0.1 + 0.7))


def test_loglik_uses_summed_logprob_when_mean_is_missing() -> None:
    candidates = [cand("a", "cat", -5.0), cand("b", "dog", -0.5)]
    assert loglik_weighted_vote(candidates).answer == "dog"


def test_tie_broken_by_summed_loglik() -> None:
    candidates = [cand("a", "cat", -3), cand("b", "dog", -1), cand("c", "cat", -3), cand("d", "dog", -2)]
    result = majority_vote(candidates)
    assert result.normalized == "dog"
    assert result.answer == "dog"
    assert result.agreement == 0.5


def test_full_tie_broken_by_prompt_order() -> None:
    candidates = [cand("a", "cat", -1.0), cand("b", "dog", -1.0)]
    assert majority_vote(candidates).answer == "cat"
    assert majority_vote(list(reversed(candidates))).answer == "dog"
    assert loglik_weighted_vote(candidates).answer == "cat"


def test_all_disagree_picks_most_likely_and_one_prompt_gets_all_weight() -> None:
    candidates = [cand("a", "cat", -2.0), cand("b", "dog", -0.5), cand("c", "bird", -1.0)]
    result = majority_vote(candidates)
    assert result.answer == "dog"
    assert result.agreement == pytest.approx(1 / 3)
    assert result.prompt_weights == {"a": 0.0, "b": 1.0, "c": 0.0}


def test_empty_answers_do_not_vote() -> None:
    candidates = [cand("a", "", -0.1), cand("b", "  ", -0.1), cand("c", "cat", -5.0)]
    result = majority_vote(candidates)
    assert result.answer == "cat"
    assert result.prompt_weights == {"a": 0.0, "b": 0.0, "c": 1.0}


def test_all_empty_answers_give_an_empty_label() -> None:
    result = majority_vote([cand("a", "", -1.0), cand("b", "", -2.0)])
    assert result.answer == ""
    assert math.isclose(sum(result.prompt_weights.values()), 1.0)


def test_all_minus_infinity_confidences_fall_back_to_uniform_votes() -> None:
    candidates = [cand("a", "cat", -math.inf), cand("b", "cat", -math.inf), cand("c", "dog", -math.inf)]
    result = loglik_weighted_vote(candidates)
    assert result.normalized == "cat"
    assert result.prompt_weights == {"a": 0.5, "b": 0.5, "c": 0.0}


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        ([], "at least one"),
        ([cand("a", "x", -1.0), cand("a", "y", -1.0)], "repeated prompt ids"),
        ([cand("a", "x", math.nan)], "NaN"),
    ],
)
def test_bad_inputs_are_refused(candidates, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        majority_vote(candidates)


def test_temperature_must_be_positive() -> None:
    with pytest.raises(ValueError, match="temperature"):
        loglik_weighted_vote(CONFIDENT_OUTLIER, temperature=0.0)


def test_registry_names_and_lookup() -> None:
    assert set(ENSEMBLE_STRATEGIES) == {"majority", "loglik"}
    assert get_strategy("loglik") is loglik_weighted_vote
    with pytest.raises(KeyError, match="majority"):
        get_strategy("mean")
    with pytest.raises(TypeError):
        ENSEMBLE_STRATEGIES["mine"] = majority_vote  # type: ignore[index]
