"""Stepwise internalisation of the reasoning: the student's labels lose their analysis a step at a time.

Deng et al. (2024, "From explicit CoT to implicit CoT: learning to internalize CoT step by
step") train a model to write its reasoning before the answer, then cut the reasoning from
the front a little more at each stage, until the answer stands alone. A model that cannot
learn a composition from answers alone can learn it this way, because each stage asks it to
compute internally only a little more than the stage before.

Here the reasoning is the model's own: the step-1 analysis of the example's best-weighted
prompt whose answer is the label (no reference is read). No library implements this schedule
for an arbitrary trainer, so it is written out here; it only rewrites label text.
"""

from __future__ import annotations

import math

from sdrt.distill.data import DistillExample
from sdrt.reasoning.extract import normalize_answer


def supporting_analysis(example: DistillExample) -> str:
    """The analysis behind the label: that of the highest-weighted prompt answering it ("" if none)."""
    label = normalize_answer(example.pseudo_label)
    agreeing = [
        rank
        for rank, answer in enumerate(example.answers)
        if normalize_answer(answer) == label and example.analyses[rank].strip()
    ]
    if not agreeing:
        return ""
    best = max(agreeing, key=lambda rank: (example.weights[rank], -rank))  # ties: the earlier prompt
    return example.analyses[best].strip()


def kept_share(step: int, total_steps: int, ramp: float) -> float:
    """Share of the analysis still written before the label at ``step`` (0-based).

    All of it at the first step, then linearly less, none from ``ramp`` of the steps on.
    """
    if ramp <= 0:
        return 0.0
    ramp_steps = max(1, round(ramp * total_steps))
    return max(0.0, 1.0 - step / ramp_steps)


def curriculum_label(analysis: str, label: str, share: float) -> str:
    """``label`` after the last ``share`` of the analysis's words (the front ones are cut first)."""
    words = analysis.split()
    kept = math.ceil(share * len(words)) if share > 0 else 0
    if not kept:
        return label
    return " ".join(words[len(words) - kept :]) + "\n" + label
