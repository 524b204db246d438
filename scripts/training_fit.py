"""Does an adapter fit what it was distilled on? Its answers on training questions, seen or not.

    sdrt eval --benchmark scenes --split train --seed 1 --limit 2000 --mode direct --mode adapter \\
        --adapter runs/study/sdrt --out runs/study/sdrt/train-results-scenes.json
    python scripts/training_fit.py runs/study/traces-scenes runs/study/sdrt/train-results-scenes.json

With the traces' own source, seed and limit the eval asks exactly the traced questions; another
limit draws another sample. The eval's questions are split by whether the trace folder holds
them (the adapter was trained on their pseudo-labels) or not (unseen questions of the same
training scenes). For the seen ones it reports how often the adapter's answer is its
pseudo-label, against how often direct answers already are: an adapter that reproduces few
more of its labels than the model did before training is underfitting, and more data would not
help it; one that reproduces them but gains little on unseen questions does not generalise.
Both groups also get the accuracy of direct and adapter answers against the references, with
intervals (the references are never trained on). Answers are compared by exact match, as the
scene benchmarks score them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdrt.evaluation.evaluate import EvalResults, ItemResult
from sdrt.evaluation.metrics import exact_match
from sdrt.evaluation.stats import bootstrap_ci, paired_difference
from sdrt.traces.store import read_traces


def pseudo_labels(traces: Path) -> dict[str, str]:
    """Each traced example's ensemble answer (every prompt row carries it); unlabelled ones are left out."""
    table = read_traces(traces).select(["example_id", "ensemble_answer"])
    pairs = zip(table["example_id"].to_pylist(), table["ensemble_answer"].to_pylist(), strict=True)
    return {example: label for example, label in pairs if label is not None}


def paired_items(results: EvalResults) -> dict[str, tuple[ItemResult, ItemResult]]:
    """(direct, adapter) per question; the file must hold both modes on the same questions."""
    by_mode: dict[str, dict[str, ItemResult]] = {"direct": {}, "adapter": {}}
    for item in results.items:
        if item.mode in by_mode:
            by_mode[item.mode][item.record_id] = item
    direct, adapter = by_mode["direct"], by_mode["adapter"]
    if not direct or set(direct) != set(adapter):
        raise SystemExit(
            "the results need direct and adapter answers on the same questions (--mode direct --mode adapter)"
        )
    return {record: (direct[record], adapter[record]) for record in direct}


def _line(name: str, scores: list[float]) -> str:
    mean, low, high = bootstrap_ci(scores)
    return f"{name} {mean:.3f} ({low:.3f}–{high:.3f})"


def _paired(name: str, a: list[float], b: list[float]) -> str:
    mean, low, high = paired_difference(a, b)
    return f"{name} {mean:+.3f} ({low:+.3f} … {high:+.3f})"


def label_fit(labels: dict[str, str], pairs: list[tuple[ItemResult, ItemResult]]) -> str:
    """How often direct and adapter answers are the pseudo-label the adapter was trained on."""
    label_right = [exact_match(labels[d.record_id], d.references) for d, _ in pairs]
    to_direct = [exact_match(d.prediction, [labels[d.record_id]]) for d, _ in pairs]
    to_adapter = [exact_match(a.prediction, [labels[a.record_id]]) for _, a in pairs]
    return (
        f"  pseudo-labels: {_line('right', label_right)}; answer = pseudo-label: "
        f"{_line('direct', to_direct)}, {_line('adapter', to_adapter)}; "
        + _paired("adapter − direct", to_adapter, to_direct)
    )


def report(labels: dict[str, str], items: dict[str, tuple[ItemResult, ItemResult]]) -> list[str]:
    seen = [items[r] for r in sorted(items) if r in labels]
    unseen = [items[r] for r in sorted(items) if r not in labels]
    lines = []
    for group, pairs in (("seen in distillation", seen), ("unseen (same training scenes)", unseen)):
        if not pairs:
            lines.append(f"{group}: none")
            continue
        direct = [d.score for d, _ in pairs]
        adapter = [a.score for _, a in pairs]
        lines.append(
            f"{group}, n = {len(pairs)}: references: {_line('direct', direct)}, {_line('adapter', adapter)}; "
            + _paired("adapter − direct", adapter, direct)
        )
        if pairs is seen:
            lines.append(label_fit(labels, pairs))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", type=Path, help="the distilled trace folder")
    parser.add_argument(
        "results", type=Path, help="sdrt eval results on training questions (direct and adapter)"
    )
    args = parser.parse_args()
    for line in report(pseudo_labels(args.traces), paired_items(EvalResults.load(args.results))):
        print(line)


if __name__ == "__main__":
    main()
