"""The pseudo-label report against hand-counted figures of a hand-made trace folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sdrt.cli import app
from sdrt.evaluation.label_quality import label_quality
from sdrt.traces.store import TraceStore

# Four examples, three prompts. Per example: references, the three answers, the pseudo-label.
EXAMPLES = [
    (["red"], ["red", "red", "blue"], "red"),  # label right, agreement 2/3
    (["blue"], ["red", "red", "red"], "red"),  # label wrong, agreement 1
    (["2"], ["2", "3", "2"], "2"),  # label right, agreement 2/3
    ([], ["yes", "no", "Yes."], "yes"),  # no references: counts for agreement only
]
PROMPTS = ["describe", "count", "plan"]


def rows() -> list[dict]:
    out = []
    for i, (references, answers, label) in enumerate(EXAMPLES):
        agreeing = sum(a.lower().rstrip(".") == label for a in answers)
        for rank, (prompt_id, answer) in enumerate(zip(PROMPTS, answers, strict=True)):
            out.append(
                {
                    "example_id": f"ex-{i}",
                    "example_index": i,
                    "question": f"question {i}",
                    "references": references,
                    "prompt_id": prompt_id,
                    "prompt_rank": rank,
                    "analysis": "some analysis",
                    "answer": answer,
                    "analysis_tokens": 10 * (rank + 1),
                    "ensemble_answer": label,
                    "ensemble_agreement": agreeing / len(answers),
                }
            )
    return out


@pytest.fixture
def traces(tmp_path):
    store = TraceStore(tmp_path / "traces")
    store.check_or_write_manifest({"data": {"source": "hand-made"}})
    store.write_shard(rows())
    return tmp_path / "traces"


def test_label_quality_matches_hand_counts(traces):
    report = label_quality(traces)
    assert (report.examples, report.with_references) == (4, 3)
    assert report.accuracy == pytest.approx(2 / 3, abs=1e-4)  # the unreferenced example does not count
    describe, count, plan = (report.prompts[p] for p in PROMPTS)
    assert describe.accuracy == pytest.approx(2 / 3, abs=1e-4)  # red, red (wrong), 2
    assert count.accuracy == pytest.approx(1 / 3, abs=1e-4)  # red, red (wrong), 3 (wrong)
    assert plan.accuracy == pytest.approx(1 / 3, abs=1e-4)  # blue (wrong), red (wrong), 2
    assert (describe.agreement, count.agreement, plan.agreement) == (1.0, 0.5, 0.75)  # "Yes." agrees
    assert plan.mean_analysis_tokens == 30.0
    # estimated from agreement alone: describe always sides with the label, so it ranks first
    assert describe.estimated_accuracy > max(count.estimated_accuracy, plan.estimated_accuracy)
    assert report.reliability_accuracy is not None and 0 <= report.reliability_accuracy <= 1
    kept = {round(t.min_agreement, 3): t for t in report.thresholds}
    assert sorted(kept) == [0.667, 1.0]
    assert (kept[0.667].examples, kept[0.667].accuracy) == (4, pytest.approx(2 / 3, abs=1e-4))
    # Filtering at full agreement keeps only the confidently wrong example.
    assert (kept[1.0].examples, kept[1.0].share, kept[1.0].accuracy) == (1, 0.25, 0.0)


def test_label_quality_cli_prints_full_tables_and_writes_json(traces, tmp_path):
    out = tmp_path / "quality.json"
    result = CliRunner().invoke(app, ["label-quality", str(traces), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "agrees with label" in result.output and "describe" in result.output
    assert "estimated (no references)" in result.output and "voted again by reliability" in result.output
    assert json.loads(out.read_text())["with_references"] == 3


def test_label_quality_refuses_an_unknown_metric_and_an_empty_folder(traces, tmp_path):
    with pytest.raises(KeyError, match="exact_match"):
        label_quality(traces, metric="bleu")
    empty = TraceStore(tmp_path / "empty")
    empty.check_or_write_manifest({"data": {"source": "hand-made"}})
    with pytest.raises(ValueError, match="no traces"):
        label_quality(tmp_path / "empty")
