"""The study's results as Markdown: every variant beside direct and the ensemble, with paired intervals.

    python scripts/study_table.py runs/study validation

Reads ``WORK/SPLIT-base-*.json`` (direct and ensemble) and
``WORK/<variant>/SPLIT-results-*.json`` (direct and adapter, the same questions), one file per
benchmark. Per benchmark: the score with its 95% interval, the paired difference against direct
with its interval, and the share of answers that differ from direct; for the multi-hop scenes
also the share of the ensemble's gain the variant keeps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sdrt.evaluation.evaluate import EvalResults

ENSEMBLE = "ensemble (the teacher's labels)"


def rows_of(results: EvalResults, name: str, mode: str) -> dict[str, tuple]:
    """benchmark -> (name, score, interval, paired difference vs direct, interval, changed)."""
    summaries = {(s.benchmark, s.mode): s for s in results.summaries}
    comparisons = {(c.benchmark, c.mode): c for c in results.comparisons}
    out = {}
    for (benchmark, m), s in summaries.items():
        if m != mode:
            continue
        c = comparisons.get((benchmark, mode))
        paired = (c.difference, c.ci_low, c.ci_high, c.changed) if c else (0.0, 0.0, 0.0, 0.0)
        out[benchmark] = (name, s.n, s.score, s.ci_low, s.ci_high, *paired)
    return out


def load_all(paths: list[Path]) -> EvalResults:
    """The results of several ``sdrt eval`` runs (one per benchmark) as one."""
    merged = EvalResults()
    for path in sorted(paths):
        part = EvalResults.load(path)
        merged.summaries += part.summaries
        merged.comparisons += part.comparisons
        merged.items += part.items
    return merged


def main(work: Path, split: str) -> None:
    base = load_all(list(work.glob(f"{split}-base-*.json")))
    table = {
        "direct": rows_of(base, "direct", "direct"),
        ENSEMBLE: rows_of(base, ENSEMBLE, "ensemble"),
    }
    for folder in sorted(p for p in work.iterdir() if list(p.glob(f"{split}-results-*.json"))):
        results = load_all(list(folder.glob(f"{split}-results-*.json")))
        table[folder.name] = rows_of(results, folder.name, "adapter")
    benchmarks = sorted({b for rows in table.values() for b in rows})
    ensemble_gain = {
        b: table[ENSEMBLE][b][2] - table["direct"][b][2]
        for b in benchmarks
        if b in table[ENSEMBLE] and b in table["direct"]
    }
    for benchmark in benchmarks:
        print(f"\n### {benchmark} ({split})\n")
        header = (
            "variant",
            "n",
            "score",
            "95% CI",
            "− direct",
            "paired 95% CI",
            "changed",
            "of ensemble's gain",
        )
        print("| " + " | ".join(header) + " |")
        print("|---|---:|---:|---|---:|---|---:|---:|")
        for rows in table.values():
            if benchmark not in rows:
                continue
            name, n, score, low, high, diff, dlow, dhigh, changed = rows[benchmark]
            gain = ensemble_gain.get(benchmark, 0.0)
            kept = f"{100 * diff / gain:.0f}%" if gain > 0 and name not in ("direct", ENSEMBLE) else ""
            print(
                f"| {name} | {n} | {score:.3f} | {low:.3f}–{high:.3f} | {diff:+.3f} | "
                f"{dlow:+.3f} … {dhigh:+.3f} | {100 * changed:.0f}% | {kept} |"
            )


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study"),
        sys.argv[2] if len(sys.argv) > 2 else "validation",
    )
