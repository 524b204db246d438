"""How far to trust each prompt, estimated from a whole dataset's answers, without labels.

Majority voting gives every prompt one vote, so a few weak prompts can outvote a strong one.
Over many examples the prompts' agreement shows which are strong: a prompt that usually sides
with the others is usually right. This is the one-coin model of Dawid and Skene (1979): prompt
k answers correctly with probability p_k, and a wrong answer falls on one of L - 1 alternatives
at random. Its maximum-likelihood answer is a weighted vote with

    v_k = max(0, log(p_k (L - 1) / (1 - p_k))),

so the estimate plugs into ``fixed_weight_vote``. The p_k are fitted by expectation-maximisation
over the examples (posteriors over each example's candidate answers); L - 1 is fitted from how
often two wrong answers coincide (they coincide with probability 1 / (L - 1) under the model),
so yes/no questions (L = 2) and open ones (L large) are both handled without a setting.

Written by hand: the libraries this project uses have no label-free voter model; ``crowd-kit``
has one for crowdsourcing tables, but it is a heavy dependency for about sixty lines.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sdrt.reasoning.ensemble import Candidate, EnsembleResult, fixed_weight_vote
from sdrt.reasoning.extract import normalize_answer

_PRIOR_RIGHT = 1.0  # Laplace pseudo-counts: one right and one wrong answer per prompt
_PRIOR_WRONG = 1.0


@dataclass(frozen=True)
class PromptReliability:
    """Each prompt's estimated accuracy and the vote weight it earns (no references read)."""

    accuracy: dict[str, float]
    vote_weights: dict[str, float]
    alternatives: float  # L - 1: how many wrong answers a wrong prompt spreads over
    examples: int
    iterations: int

    def vote(self, candidates: Sequence[Candidate]) -> EnsembleResult:
        return fixed_weight_vote(candidates, self.vote_weights)


def estimate_reliability(
    examples: Sequence[Sequence[Candidate]], *, max_iterations: int = 200, tolerance: float = 1e-7
) -> PromptReliability:
    """Fit the one-coin model to the K candidates of every example (a prompt may be missing)."""
    if not examples:
        raise ValueError("estimating prompt reliability needs at least one example")
    prompts = list(dict.fromkeys(c.prompt_id for ex in examples for c in ex))
    if not prompts:
        raise ValueError("estimating prompt reliability needs at least one candidate answer")
    answers = [_answered(ex) for ex in examples]
    distinct = len({a for ex in answers for a in ex.values()})
    posteriors = [_majority_posterior(ex) for ex in answers]
    accuracy = dict.fromkeys(prompts, 0.5)
    alternatives = max(1.0, distinct - 1.0)
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        new_accuracy = _accuracies(prompts, answers, posteriors)
        alternatives = _alternatives(answers, posteriors, ceiling=max(1.0, distinct - 1.0))
        posteriors = [_posterior(ex, new_accuracy, alternatives) for ex in answers]
        moved = max(abs(new_accuracy[k] - accuracy[k]) for k in prompts)
        accuracy = new_accuracy
        if moved < tolerance:
            break
    weights = {k: max(0.0, math.log(p * alternatives / (1.0 - p))) for k, p in accuracy.items()}
    return PromptReliability(
        accuracy=accuracy,
        vote_weights=weights,
        alternatives=alternatives,
        examples=len(examples),
        iterations=iterations,
    )


def _answered(candidates: Sequence[Candidate]) -> dict[str, str]:
    """prompt id -> normalised answer, for the prompts that gave one (empty answers abstain)."""
    keyed = {c.prompt_id: normalize_answer(c.answer) for c in candidates}
    return {k: a for k, a in keyed.items() if a}


def _majority_posterior(answers: dict[str, str]) -> dict[str, float]:
    counts = Counter(answers.values())
    if not counts:
        return {}
    top = max(counts.values())
    leaders = [a for a, n in counts.items() if n == top]
    return {a: (1.0 / len(leaders) if a in leaders else 0.0) for a in counts}


def _accuracies(
    prompts: list[str], answers: list[dict[str, str]], posteriors: list[dict[str, float]]
) -> dict[str, float]:
    right = dict.fromkeys(prompts, _PRIOR_RIGHT)
    total = dict.fromkeys(prompts, _PRIOR_RIGHT + _PRIOR_WRONG)
    for ex, q in zip(answers, posteriors, strict=True):
        for k, a in ex.items():
            right[k] += q[a]
            total[k] += 1.0
    return {k: right[k] / total[k] for k in prompts}


def _alternatives(answers: list[dict[str, str]], posteriors: list[dict[str, float]], ceiling: float) -> float:
    """1 / P(two wrong answers coincide), from pairs of prompts that are both wrong."""
    collide, both_wrong = _PRIOR_RIGHT, _PRIOR_RIGHT + _PRIOR_WRONG
    for ex, q in zip(answers, posteriors, strict=True):
        counts = Counter(ex.values())
        m = len(ex)
        collide += sum(math.comb(n, 2) * (1.0 - q[a]) for a, n in counts.items())
        both_wrong += sum(p * math.comb(m - counts[y], 2) for y, p in q.items())
    return min(ceiling, max(1.0, both_wrong / collide))


def _posterior(answers: dict[str, str], accuracy: dict[str, float], alternatives: float) -> dict[str, float]:
    """P(true answer = y | the prompts' answers), over the answers some prompt gave."""
    if not answers:
        return {}
    scores = {
        y: sum(
            math.log(accuracy[k]) if a == y else math.log((1.0 - accuracy[k]) / alternatives)
            for k, a in answers.items()
        )
        for y in set(answers.values())
    }
    top = max(scores.values())
    exps = {y: math.exp(s - top) for y, s in scores.items()}
    total = sum(exps.values())
    return {y: e / total for y, e in exps.items()}
