"""Votes over the K dual-query answers: the pseudo-label and the per-prompt distillation weights.

Answers are grouped by ``normalize_answer`` ("Two", "2" and "two." are one answer). Each
candidate carries a vote weight v_k; the group with the largest total weight wins. Ties are
broken by the group's summed answer log-likelihood (higher wins; tied groups have equal size
under majority, so this compares their mean confidence), then by the position of the group's
first candidate (the prompt order the caller gave).

Distillation weights. With W the winning group (the candidates that agree with the pseudo-label):

    w_k = v_k / sum_{j in W} v_j   for k in W,      w_k = 0   otherwise.

Disagreeing prompts get exactly 0, not a floor: the teacher is teacher-forced on the pseudo-label,
and a trace that led its own prompt to another answer does not support that label, so distilling
it would pull the student towards reasoning that contradicts the target. Empty answers (nothing
could be extracted) never vote unless every answer is empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from sdrt.reasoning.extract import normalize_answer


@dataclass(frozen=True)
class Candidate:
    """One prompt's answer. ``mean_logprob`` is the per-token mean; when absent, ``logprob`` stands in."""

    prompt_id: str
    answer: str
    logprob: float  # sum of the answer tokens' log-probabilities
    mean_logprob: float | None = None

    @property
    def confidence(self) -> float:
        return self.logprob if self.mean_logprob is None else self.mean_logprob


@dataclass(frozen=True)
class EnsembleResult:
    """The pseudo-label and how the K prompts stand towards it."""

    answer: str  # surface form of the winning group's best candidate
    normalized: str
    prompt_weights: dict[str, float]  # sums to 1; zero for prompts that disagree
    agreement: float  # share of the K candidates in the winning group
    votes: dict[str, float]  # normalised answer -> total vote weight


EnsembleStrategy = Callable[[Sequence[Candidate]], EnsembleResult]


def majority_vote(candidates: Sequence[Candidate]) -> EnsembleResult:
    """One vote per prompt (v_k = 1): agreeing prompts share the weight equally."""
    _check(candidates)
    return _decide(candidates, [1.0] * len(candidates))


def loglik_weighted_vote(candidates: Sequence[Candidate], temperature: float = 1.0) -> EnsembleResult:
    """Confidence-weighted vote: v_k = softmax_k(mean token log-prob / temperature) over the K.

    A lower temperature trusts the most confident prompt more; a high one approaches majority.
    """
    _check(candidates)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _decide(candidates, softmax([c.confidence / temperature for c in candidates]))


def fixed_weight_vote(candidates: Sequence[Candidate], weights: Mapping[str, float]) -> EnsembleResult:
    """Vote with one fixed weight per prompt (v_k = ``weights[prompt_id]``), e.g. a reliability estimate.

    Unlike the per-example strategies above, the weights come from outside the example: from
    how often each prompt agrees with the others over a whole dataset (``sdrt.reasoning.reliability``).
    """
    _check(candidates)
    unknown = [c.prompt_id for c in candidates if c.prompt_id not in weights]
    if unknown:
        raise ValueError(f"no vote weight for prompts {unknown}; weights cover {sorted(weights)}")
    if any(w < 0 or math.isnan(w) for w in weights.values()):
        raise ValueError(f"vote weights must be non-negative numbers, got {dict(weights)}")
    return _decide(candidates, [weights[c.prompt_id] for c in candidates])


ENSEMBLE_STRATEGIES: Mapping[str, EnsembleStrategy] = MappingProxyType(
    {"majority": majority_vote, "loglik": loglik_weighted_vote}
)


def get_strategy(name: str) -> EnsembleStrategy:
    try:
        return ENSEMBLE_STRATEGIES[name]
    except KeyError:
        hint = (
            " (reliability weighting needs the whole dataset's answers: `labels: reliability` in a"
            " distill config; `sdrt label-quality` shows what it would give)"
            if name == "reliability"
            else ""
        )
        raise KeyError(
            f"unknown ensemble strategy {name!r}; known: {', '.join(ENSEMBLE_STRATEGIES)}{hint}"
        ) from None


def softmax(scores: Sequence[float]) -> list[float]:
    """Stable softmax; all -inf scores (no usable confidence) fall back to uniform."""
    top = max(scores)
    if top == -math.inf:
        return [1.0 / len(scores)] * len(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _check(candidates: Sequence[Candidate]) -> None:
    if not candidates:
        raise ValueError("an ensemble needs at least one candidate answer")
    ids = [c.prompt_id for c in candidates]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"each prompt may answer once; repeated prompt ids: {repeated}")
    bad = [c.prompt_id for c in candidates if math.isnan(c.logprob) or math.isnan(c.confidence)]
    if bad:
        raise ValueError(f"log-probabilities are NaN for prompts {bad}")


def _decide(candidates: Sequence[Candidate], vote_weights: Sequence[float]) -> EnsembleResult:
    keys = [normalize_answer(c.answer) for c in candidates]
    voters = [i for i, key in enumerate(keys) if key] or list(range(len(candidates)))
    groups: dict[str, list[int]] = {}
    for i in voters:
        groups.setdefault(keys[i], []).append(i)

    totals = {key: sum(vote_weights[i] for i in members) for key, members in groups.items()}
    winner = max(groups, key=lambda key: _group_rank(key, groups, totals, candidates))
    members = groups[winner]
    best = max(members, key=lambda i: (vote_weights[i], candidates[i].logprob, -i))

    member_total = sum(vote_weights[i] for i in members)
    weights = {
        c.prompt_id: (vote_weights[i] / member_total if member_total > 0 else 1 / len(members))
        if i in members
        else 0.0
        for i, c in enumerate(candidates)
    }
    return EnsembleResult(
        answer=candidates[best].answer,
        normalized=winner,
        prompt_weights=weights,
        agreement=len(members) / len(candidates),
        votes=totals,
    )


def _group_rank(
    key: str, groups: dict[str, list[int]], totals: dict[str, float], candidates: Sequence[Candidate]
) -> tuple[float, float, int]:
    """Sort key: total vote weight (rounded so float noise cannot break a tie), log-likelihood, order."""
    members = groups[key]
    return (round(totals[key], 9), sum(candidates[i].logprob for i in members), -members[0])
