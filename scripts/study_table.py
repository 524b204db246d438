"""The study's results as Markdown: every variant beside direct and the ensemble, with paired intervals.

    python scripts/study_table.py runs/study validation
    python scripts/study_table.py runs/study-6k test --with runs/study/sdrt --against study/sdrt

Reads ``WORK/SPLIT-base-*.json`` (direct and ensemble) and
``WORK/<variant>/SPLIT-results-*.json`` (direct and adapter, the same questions), one file per
benchmark. Per benchmark: the score with its 95% interval, the paired difference against direct
with its interval, and the share of answers that differ from direct; for the multi-hop scenes
also the share of the ensemble's gain the variant keeps. Each prompt's own step-2 answers
inside the ensemble are rows of their own (``dual:<id>``), and the ensemble is compared, paired,
with the best of them (a prompt chosen on the same questions, so a generous baseline). Every
other variant (a control or an ablation) is also compared, paired, with the full adapter
(the ``sdrt`` folder), which is what crediting one of SDRT's parts needs.

A variant's snapshots (``snapshot_every``, scored by ``scripts/study.sh``) are rows of their own,
``<variant> @ <step>``: its learning curve.

``--with DIR`` adds a variant folder of another study on the same held-out questions (named
``<its study>/<folder>``), e.g. the same training on fewer traces; ``--against NAME`` pairs every
variant with that one instead of ``sdrt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdrt.distill.trainer import SNAPSHOTS
from sdrt.evaluation.benchmarks import get_benchmark
from sdrt.evaluation.evaluate import (
    Comparison,
    EvalResults,
    ItemResult,
    changes_by_question_type,
    compare,
    prompt_results,
    summarise,
)

ENSEMBLE = "ensemble (the teacher's labels)"
FULL_ADAPTER = "sdrt"  # the folder of the study's SDRT adapter (scripts/study.sh)


def rows_of(results: EvalResults, name: str, mode: str) -> dict[str, tuple]:
    """benchmark -> (name, score, interval, paired difference vs direct, interval, changed)."""
    summaries = {(s.benchmark, s.mode): s for s in results.summaries}
    comparisons = {(c.benchmark, c.mode): c for c in results.comparisons}
    out = {}
    for (benchmark, m), s in summaries.items():
        if m != mode:
            continue
        out[benchmark] = (
            name,
            s.n,
            s.score,
            s.ci_low,
            s.ci_high,
            *paired(comparisons.get((benchmark, mode))),
        )
    return out


def prompt_rows(base: EvalResults) -> tuple[dict[str, dict[str, tuple]], list[str]]:
    """Each prompt's own answers inside the ensemble as variants, and per benchmark a line
    comparing the ensemble, paired, with its best prompt."""
    by_mode: dict[tuple[str, str], list[ItemResult]] = {}
    for item in base.items + prompt_results([i for i in base.items if i.mode == "ensemble"]):
        by_mode.setdefault((item.benchmark, item.mode), []).append(item)
    rows: dict[str, dict[str, tuple]] = {}
    best: dict[str, tuple[float, str]] = {}
    for (benchmark, mode), items in sorted(by_mode.items()):
        direct = by_mode.get((benchmark, "direct"))
        if not mode.startswith("dual:") or not direct:
            continue
        s = summarise(get_benchmark(benchmark), mode, items)
        c = compare(benchmark, mode, "direct", items, direct)
        rows.setdefault(mode, {})[benchmark] = (mode, s.n, s.score, s.ci_low, s.ci_high, *paired(c))
        best[benchmark] = max(best.get(benchmark, (-1.0, "")), (s.score, mode))
    lines = []
    for benchmark, (_, mode) in sorted(best.items()):
        c = compare(benchmark, "ensemble", mode, by_mode[(benchmark, "ensemble")], by_mode[(benchmark, mode)])
        lines.append(
            f"{benchmark}: ensemble − its best prompt ({mode}, chosen on these questions) = "
            f"{c.difference:+.3f} ({c.ci_low:+.3f} … {c.ci_high:+.3f}, paired, n = {c.n})"
        )
    return rows, lines


def paired(c: Comparison | None) -> tuple[float, float, float, float]:
    """(difference, interval low, high, share changed) of a comparison; zeros for direct itself."""
    return (c.difference, c.ci_low, c.ci_high, c.changed) if c else (0.0, 0.0, 0.0, 0.0)


def load_all(paths: list[Path]) -> EvalResults:
    """The results of several ``sdrt eval`` runs (one per benchmark) as one."""
    merged = EvalResults()
    for path in sorted(paths):
        part = EvalResults.load(path)
        merged.summaries += part.summaries
        merged.comparisons += part.comparisons
        merged.items += part.items
    return merged


def main(work: Path, split: str, others: list[Path], against: str | None = None) -> None:
    """The tables; ``against`` names the variant every other is paired with (default: the full
    adapter where the study has one), and a name no variant has is refused, not left silent."""
    base = load_all(list(work.glob(f"{split}-base-*.json")))
    table = {
        "direct": rows_of(base, "direct", "direct"),
        ENSEMBLE: rows_of(base, ENSEMBLE, "ensemble"),
    }
    per_prompt, best_prompt_lines = prompt_rows(base)
    table.update(per_prompt)
    pattern = f"{split}-results-*.json"
    files = {}
    for folder in sorted(p for p in work.iterdir() if p.is_dir()):
        if paths := list(folder.glob(pattern)):
            files[folder.name] = paths
        for snapshot in sorted(folder.glob(f"{SNAPSHOTS}/step-*")):  # a learning curve, step by step
            if paths := list(snapshot.glob(pattern)):
                files[f"{folder.name} @ {int(snapshot.name.split('-')[1])}"] = paths
    for folder in others:
        if not (paths := list(folder.glob(pattern))):
            raise SystemExit(f"{folder}: no {pattern}")
        files[f"{folder.parent.name}/{folder.name}"] = paths
    variant_results = {}
    for name, paths in files.items():
        results = load_all(paths)
        table[name] = rows_of(results, name, "adapter")
        variant_results[name] = results
    if against is not None and against not in variant_results:
        raise SystemExit(f"--against {against}: no such variant; known: {', '.join(variant_results)}")
    against = against or FULL_ADAPTER
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
            credited = name not in ("direct", ENSEMBLE) and not name.startswith("dual:")
            kept = f"{100 * diff / gain:.0f}%" if gain > 0 and credited else ""
            print(
                f"| {name} | {n} | {score:.3f} | {low:.3f}–{high:.3f} | {diff:+.3f} | "
                f"{dlow:+.3f} … {dhigh:+.3f} | {100 * changed:.0f}% | {kept} |"
            )
        for line in best_prompt_lines:
            if line.startswith(f"{benchmark}:"):
                print(f"\n{line}")
        for line in against_reference(variant_results, benchmark, against):
            print(f"\n{line}")
        print_changes_by_type(variant_results, benchmark)


def against_reference(results_of: dict[str, EvalResults], benchmark: str, reference_name: str) -> list[str]:
    """One line per other variant: its answers − the reference variant's, paired on the same questions."""

    def adapter_items(results: EvalResults) -> list[ItemResult]:
        return [i for i in results.items if i.benchmark == benchmark and i.mode == "adapter"]

    reference = adapter_items(results_of[reference_name]) if reference_name in results_of else []
    if not reference:
        return []
    lines = []
    for name, results in results_of.items():
        items = adapter_items(results)
        if name == reference_name or not items:
            continue
        c = compare(benchmark, "adapter", reference_name, items, reference)
        lines.append(
            f"{benchmark}: {name} − {reference_name} = {c.difference:+.3f} "
            f"({c.ci_low:+.3f} … {c.ci_high:+.3f}, paired, n = {c.n}; "
            f"{100 * c.changed:.0f}% of answers differ)"
        )
    return lines


def print_changes_by_type(results_of: dict[str, EvalResults], benchmark: str) -> None:
    """Per variant and question type: direct's score, the variant's, and the answers it changes."""
    rows = [
        (name, *row)
        for name, results in results_of.items()
        for row in changes_by_question_type(results, benchmark, "adapter", "direct")
        if row[0] != "all"  # a benchmark without question types has nothing to add here
    ]
    if not rows:
        return
    print("\n| variant | question type | n | direct | variant | changed |")
    print("|---|---|---:|---:|---:|---:|")
    for name, kind, n, direct, score, changed in rows:
        print(f"| {name} | {kind} | {n} | {direct:.3f} | {score:.3f} | {100 * changed:.0f}% |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path, nargs="?", default=Path("runs/study"))
    parser.add_argument("split", nargs="?", default="validation")
    parser.add_argument(
        "--with",
        dest="others",
        type=Path,
        action="append",
        default=[],
        help="a variant folder of another study, on the same questions",
    )
    parser.add_argument(
        "--against", default=None, help=f"the variant every other is paired with (default: {FULL_ADAPTER})"
    )
    args = parser.parse_args()
    main(args.work, args.split, args.others, args.against)
