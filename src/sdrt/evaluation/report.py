"""A Markdown summary and PNG plots of an evaluation (and of the training that led to it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from sdrt.evaluation.evaluate import (  # noqa: E402
    EvalResults,
    ItemResult,
    ModeSummary,
    changes_by_question_type,
    prompt_results,
)


def markdown_table(summaries: Sequence[ModeSummary]) -> str:
    lines = [
        "| benchmark | mode | metric | n | score | 95% CI | tokens/answer | calls/answer | s/answer |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.benchmark} | {s.mode} | {s.metric} | {s.n} | {s.score:.3f} "
            f"| {s.ci_low:.3f}–{s.ci_high:.3f} | {s.tokens_per_answer:.1f} | {s.calls_per_answer:.1f} "
            f"| {s.seconds_per_answer:.3f} |"
        )
    return "\n".join(lines)


def per_prompt_scores(items: Sequence[ItemResult]) -> dict[tuple[str, str], float]:
    """(benchmark, prompt id) -> mean score of that prompt's own answer inside the ensemble."""
    totals: dict[tuple[str, str], list[float]] = {}
    for item in prompt_results(items):
        totals.setdefault((item.benchmark, item.mode.removeprefix("dual:")), []).append(item.score)
    return {key: sum(v) / len(v) for key, v in totals.items()}


def plot_score_vs_cost(summaries: Sequence[ModeSummary], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for benchmark in sorted({s.benchmark for s in summaries}):
        rows = [s for s in summaries if s.benchmark == benchmark]
        xs = [max(s.tokens_per_answer, 0.1) for s in rows]
        ax.scatter(xs, [s.score for s in rows], label=benchmark)
        for i, (s, x) in enumerate(zip(rows, xs, strict=True)):  # staggered: modes often coincide
            ax.annotate(s.mode, (x, s.score), textcoords="offset points", xytext=(4, 4 - 9 * i), fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("generated tokens per answer (log)")
    ax.set_ylabel("score")
    ax.set_title("score against cost per answer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_prompt(scores: dict[tuple[str, str], float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{b}\n{p}" for b, p in scores]
    ax.bar(range(len(scores)), list(scores.values()))
    ax.set_xticks(range(len(scores)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("score of the prompt's own answer")
    ax.set_title("per-prompt accuracy (dual-query, held out)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(logs: dict[str, list[dict]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in logs.items():
        steps = [e["step"] for e in history]
        ax.plot(steps, [e["loss"] for e in history], label=f"{name}: total")
        for term in sorted({t for e in history for t in e["terms"]}):
            ax.plot(
                steps, [e["terms"].get(term, float("nan")) for e in history], "--", label=f"{name}: {term}"
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("distillation loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def changes_section(results: EvalResults) -> list[str]:
    """What each mode changed against the baseline, per question type (where records have types)."""
    lines: list[str] = []
    for c in results.comparisons:
        rows = changes_by_question_type(results, c.benchmark, c.mode, c.baseline)
        if len(rows) < 2:  # untyped questions: the paired line above says it all
            continue
        lines += [
            f"### {c.benchmark}: {c.mode} against {c.baseline}, by question type",
            "",
            f"| question type | n | {c.baseline} | {c.mode} | answers changed |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [f"| {t} | {n} | {b:.3f} | {m:.3f} | {100 * ch:.0f}% |" for t, n, b, m, ch in rows]
        lines.append("")
    return lines


def write_report(
    results: EvalResults,
    out_dir: str | Path,
    *,
    train_logs: dict[str, Path] | None = None,
    title: str = "SDRT report",
    notes: Sequence[str] = (),
) -> Path:
    """``out_dir/README.md`` plus ``score_vs_cost.png``, ``per_prompt.png`` and ``training.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", markdown_table(results.summaries), ""]
    if results.comparisons:
        parts += ["## Paired differences (same examples)", ""]
        parts += [
            f"- {c.benchmark}: {c.mode} − {c.baseline} = {c.difference:+.3f} "
            f"(95% CI {c.ci_low:+.3f} … {c.ci_high:+.3f}, n = {c.n}); "
            f"{100 * c.changed:.0f}% of the answers differ"
            for c in results.comparisons
        ]
        parts.append("")
        parts += changes_section(results)
    plot_score_vs_cost(results.summaries, out / "score_vs_cost.png")
    parts += ["![score against cost](score_vs_cost.png)", ""]
    prompt_scores = per_prompt_scores(results.items)
    if prompt_scores:
        plot_per_prompt(prompt_scores, out / "per_prompt.png")
        parts += ["## Per-prompt accuracy", "", "| benchmark | prompt | score |", "|---|---|---:|"]
        parts += [f"| {b} | {p} | {v:.3f} |" for (b, p), v in prompt_scores.items()]
        parts += ["", "![per-prompt accuracy](per_prompt.png)", ""]
    logs = {
        name: json.loads(Path(p).read_text()) for name, p in (train_logs or {}).items() if Path(p).exists()
    }
    if logs:
        plot_training(logs, out / "training.png")
        parts += ["## Training", "", "![distillation loss](training.png)", ""]
    parts += [f"- {note}" for note in notes]
    path = out / "README.md"
    path.write_text("\n".join(parts).rstrip() + "\n")
    return path
