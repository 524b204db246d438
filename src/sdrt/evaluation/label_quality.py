"""How good are a trace folder's pseudo-labels? Measured against references, never trained on.

Distillation never reads the references a trace row carries; this report does, so that a
user sees what the ensemble teaches before spending steps on it: the pseudo-labels' accuracy,
each prompt's accuracy (and its estimate from the answers alone, which ``labels: reliability``
weighs by) and agreement with the pseudo-label, the accuracy of the labels voted again by
those estimates, and, per agreement threshold
(``min_agreement`` of a distill config), how many examples survive and how accurate they are.
Only examples that have references count towards accuracies; a metric that needs more of a
record than its answers (multiple choice) is refused by the metric itself.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from sdrt.evaluation.metrics import METRICS
from sdrt.reasoning.reliability import estimate_reliability
from sdrt.traces.store import TraceStore, row_candidates


@dataclass(frozen=True)
class PromptQuality:
    accuracy: float | None  # the prompt's own answers against the references
    agreement: float  # share of examples where the prompt's answer is the pseudo-label
    mean_analysis_tokens: float
    estimated_accuracy: float  # from the answers alone (what ``labels: reliability`` weighs by)


@dataclass(frozen=True)
class Threshold:
    min_agreement: float
    examples: int  # examples kept at this threshold
    share: float  # of all examples
    accuracy: float | None  # of the kept pseudo-labels


@dataclass(frozen=True)
class LabelQuality:
    metric: str
    examples: int
    with_references: int
    accuracy: float | None  # of all pseudo-labels
    reliability_accuracy: float | None  # of the labels ``labels: reliability`` would train on
    prompts: dict[str, PromptQuality]
    thresholds: list[Threshold] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_quality(traces_dir: str | Path, metric: str = "exact_match") -> LabelQuality:
    """The report for one trace folder, scored with ``metric`` (a registered metric's name)."""
    if metric not in METRICS:
        raise KeyError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    rows = TraceStore(traces_dir).read().to_pylist()
    examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        examples[row["example_id"]].append(row)
    if not examples:
        raise ValueError(f"{traces_dir} holds no traces yet")
    scorer = METRICS[metric]
    labels = {eid: _Example(group, scorer) for eid, group in examples.items()}
    judged = [ex for ex in labels.values() if ex.references]
    reliability = estimate_reliability([ex.candidates for ex in labels.values()])
    revoted = [scorer(reliability.vote(ex.candidates).answer, {"answers": ex.references}) for ex in judged]
    return LabelQuality(
        metric=metric,
        examples=len(labels),
        with_references=len(judged),
        accuracy=_mean_or_none([ex.label_correct for ex in judged]),
        reliability_accuracy=_mean_or_none(revoted),
        prompts=_prompt_quality(labels.values(), scorer, reliability.accuracy),
        thresholds=_thresholds(list(labels.values())),
    )


class _Example:
    """One example's K rows: its pseudo-label, agreement and references."""

    def __init__(self, rows: list[dict[str, Any]], scorer: Any) -> None:
        self.rows = sorted(rows, key=lambda r: r["prompt_rank"])
        first = self.rows[0]
        self.label = (first["ensemble_answer"] or "").strip()
        self.agreement = float(first["ensemble_agreement"] or 0.0)
        self.references = list(first["references"] or [])
        self.label_correct = scorer(self.label, {"answers": self.references}) if self.references else 0.0
        self.candidates = row_candidates(self.rows)


def _prompt_quality(examples: Any, scorer: Any, estimated: dict[str, float]) -> dict[str, PromptQuality]:
    correct, agree, tokens = defaultdict(list), defaultdict(list), defaultdict(list)
    for ex in examples:
        for row in ex.rows:
            pid, answer = row["prompt_id"], (row["answer"] or "").strip()
            if ex.references:
                correct[pid].append(scorer(answer, {"answers": ex.references}))
            agree[pid].append(scorer(answer, {"answers": [ex.label]}) if ex.label else 0.0)
            tokens[pid].append(float(row["analysis_tokens"] or 0))
    return {
        pid: PromptQuality(
            _mean_or_none(correct[pid]),
            round(mean(agree[pid]), 4),
            round(mean(tokens[pid]), 1),
            round(estimated[pid], 4),
        )
        for pid in agree
    }


def _thresholds(examples: list[_Example]) -> list[Threshold]:
    """Every agreement level that occurs: what ``min_agreement`` at that level keeps."""
    levels = sorted({round(ex.agreement, 9) for ex in examples})  # 2/3 once, whatever its float
    out = []
    for level in levels:
        kept = [ex for ex in examples if ex.label and ex.agreement >= level - 1e-9]
        out.append(
            Threshold(
                min_agreement=round(level, 4),
                examples=len(kept),
                share=round(len(kept) / len(examples), 4),
                accuracy=_mean_or_none([ex.label_correct for ex in kept if ex.references]),
            )
        )
    return out


def _mean_or_none(values: list[float]) -> float | None:
    return round(mean(values), 4) if values else None


def print_label_quality(report: LabelQuality, traces_dir: str | Path) -> None:
    """Three small tables: the labels, each prompt, and what each agreement threshold keeps."""
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)  # piped output is not cut
    console.print(
        f"{traces_dir}: {report.examples} examples, {report.with_references} with references; "
        f"pseudo-label {report.metric} {_shown(report.accuracy)}; "
        f"voted again by reliability (labels: reliability) {_shown(report.reliability_accuracy)}"
    )
    prompts = Table(title="per prompt")
    columns = ("prompt", report.metric, "estimated (no references)", "agrees with label", "analysis tokens")
    for column in columns:
        prompts.add_column(column, no_wrap=True)
    for pid, q in report.prompts.items():
        prompts.add_row(
            pid,
            _shown(q.accuracy),
            f"{q.estimated_accuracy:.3f}",
            f"{q.agreement:.3f}",
            f"{q.mean_analysis_tokens:.1f}",
        )
    console.print(prompts)
    kept = Table(title="agreement filtering (min_agreement of a distill config)")
    for column in ("min agreement", "examples kept", "share", f"label {report.metric}"):
        kept.add_column(column, no_wrap=True)
    for t in report.thresholds:
        kept.add_row(f"{t.min_agreement:.3f}", str(t.examples), f"{t.share:.3f}", _shown(t.accuracy))
    console.print(kept)


def _shown(value: float | None) -> str:
    return "n/a (no references)" if value is None else f"{value:.3f}"
