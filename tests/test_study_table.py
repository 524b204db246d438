"""scripts/study_table.py: per-benchmark files merged, each variant beside direct and the ensemble."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from sdrt.evaluation.evaluate import Comparison, EvalResults, ModeSummary

SCRIPT = Path(__file__).parents[1] / "scripts" / "study_table.py"


def summary(benchmark: str, mode: str, score: float) -> ModeSummary:
    return ModeSummary(benchmark, mode, "exact_match", 500, score, score - 0.04, score + 0.04, 1.0, 1.0, 0.1)


def results(benchmark: str, mode: str, direct: float, other: float, changed: float) -> EvalResults:
    diff = other - direct
    return EvalResults(
        summaries=[summary(benchmark, "direct", direct), summary(benchmark, mode, other)],
        comparisons=[Comparison(benchmark, mode, "direct", 500, diff, diff - 0.03, diff + 0.03, changed)],
    )


def test_the_table_merges_benchmark_files_and_states_the_share_of_the_gain_kept(
    tmp_path, capsys, monkeypatch
):
    results("scenes", "ensemble", 0.50, 0.70, 0.3).save(tmp_path / "validation-base-scenes.json")
    base_single = EvalResults(summaries=[summary("scenes-single-hop", "direct", 0.80)])
    base_single.save(tmp_path / "validation-base-single-hop.json")
    (tmp_path / "sdrt").mkdir()
    results("scenes", "adapter", 0.50, 0.65, 0.2).save(tmp_path / "sdrt" / "validation-results-scenes.json")
    results("scenes-single-hop", "adapter", 0.80, 0.795, 0.01).save(
        tmp_path / "sdrt" / "validation-results-single-hop.json"
    )
    monkeypatch.setattr(sys, "argv", ["study_table.py", str(tmp_path), "validation"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    scenes = out.split("### scenes (validation)")[1].split("###")[0]
    assert "| ensemble (the teacher's labels) | 500 | 0.700 |" in scenes
    row = next(line for line in scenes.splitlines() if line.startswith("| sdrt |"))
    assert "+0.150" in row and "| 20% | 75% |" in row  # 0.15 of the ensemble's 0.20
    assert "### scenes-single-hop (validation)" in out and "-0.005" in out
