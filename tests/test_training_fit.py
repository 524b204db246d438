"""scripts/training_fit.py: seen and unseen training questions apart, answers against pseudo-labels."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from sdrt.evaluation.evaluate import EvalResults, ItemResult
from sdrt.traces.store import TraceStore

SCRIPT = Path(__file__).parents[1] / "scripts" / "training_fit.py"


def trace_rows(labels: dict[str, str | None]) -> list[dict]:
    """One prompt row per example, the required fields and the ensemble answer (all the script reads)."""
    return [
        {
            "example_id": eid,
            "example_index": i,
            "question": eid,
            "prompt_id": "p",
            "prompt_rank": 0,
            "ensemble_answer": label,
        }
        for i, (eid, label) in enumerate(labels.items())
    ]


def item(mode: str, record: str, prediction: str, reference: str) -> ItemResult:
    return ItemResult(
        "scenes",
        mode,
        record,
        "q",
        prediction,
        prediction,
        [reference],
        float(prediction == reference),
        2,
        1,
        0.1,
    )


def run(tmp_path, monkeypatch, capsys, items: list[ItemResult]) -> str:
    TraceStore(tmp_path / "traces").write_shard(
        trace_rows({"a": "red", "b": "blue", "c": "green", "d": "red", "z": None})
    )
    EvalResults(items=items).save(tmp_path / "train.json")
    monkeypatch.setattr(
        sys, "argv", ["training_fit.py", str(tmp_path / "traces"), str(tmp_path / "train.json")]
    )
    runpy.run_path(str(SCRIPT), run_name="__main__")
    return capsys.readouterr().out


def test_seen_questions_are_scored_against_their_pseudo_labels_and_unseen_ones_apart(
    tmp_path, monkeypatch, capsys
):
    # Seen a-d: labels red, blue, green, red; references red, blue, blue, blue (labels 2 of 4 right).
    # Direct answers equal the label on a only; the adapter's on a, b, c (and "Red." counts: exact
    # match's normalisation). Unseen e: direct wrong, adapter right.
    references = {"a": "red", "b": "blue", "c": "blue", "d": "blue"}
    direct = {"a": "red", "b": "red", "c": "red", "d": "green"}
    adapter = {"a": "Red.", "b": "blue", "c": "green", "d": "green"}
    items = [item("direct", r, direct[r], references[r]) for r in references]
    items += [item("adapter", r, adapter[r], references[r]) for r in references]
    items += [item("direct", "e", "no", "yes"), item("adapter", "e", "yes", "yes")]
    # z was traced but got no label (no vote): not distilled, so it is scored with the unseen.
    items += [item("direct", "z", "no", "no"), item("adapter", "z", "no", "no")]
    out = run(tmp_path, monkeypatch, capsys, items).splitlines()
    assert out[0].startswith("seen in distillation, n = 4: references: direct 0.250")
    assert "pseudo-labels: right 0.500" in out[1]
    assert "answer = pseudo-label: direct 0.250" in out[1] and "adapter 0.750" in out[1]
    assert "adapter − direct +0.500" in out[1]
    assert out[2].startswith("unseen (same training scenes), n = 2: references: direct 0.500")
    assert "adapter 1.000" in out[2]


def test_results_without_both_modes_on_the_same_questions_are_refused(tmp_path, monkeypatch, capsys):
    items = [
        item("direct", "a", "red", "red"),
        item("direct", "b", "red", "blue"),
        item("adapter", "a", "red", "red"),
    ]
    with pytest.raises(SystemExit, match="direct and adapter answers on the same questions"):
        run(tmp_path, monkeypatch, capsys, items)
