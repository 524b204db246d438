"""scripts/study_table.py: per-benchmark files merged, each variant beside direct and the ensemble."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from sdrt.evaluation.evaluate import Comparison, EvalResults, ItemResult, ModeSummary, prompt_results

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


def item(
    mode: str, record: int, prediction: str, reference: str, prompt_answers=None, kind=None
) -> ItemResult:
    right = float(prediction == reference)
    return ItemResult(
        "scenes",
        mode,
        f"r{record}",
        "q",
        prediction,
        prediction,
        [reference],
        right,
        2,
        1,
        0.1,
        prompt_answers=prompt_answers or {},
        question_type=kind,
    )


def test_each_prompt_inside_the_ensemble_is_scored_and_the_ensemble_compared_with_the_best(
    tmp_path, capsys, monkeypatch
):
    # Four questions, reference "yes". Prompt a is right on 3, prompt b on 1; the vote on 3.
    answers = [("yes", "yes"), ("yes", "no"), ("yes", "no"), ("no", "no")]
    items = [item("direct", r, "no", "yes") for r in range(4)]
    for r, (a, b) in enumerate(answers):
        voted = "yes" if r < 3 else "no"
        items.append(item("ensemble", r, voted, "yes", {"a": a, "b": b}))
    EvalResults(
        summaries=[summary("scenes", "direct", 0.0), summary("scenes", "ensemble", 0.75)],
        comparisons=[Comparison("scenes", "ensemble", "direct", 4, 0.75, 0.5, 1.0, 0.75)],
        items=items,
    ).save(tmp_path / "validation-base-scenes.json")
    monkeypatch.setattr(sys, "argv", ["study_table.py", str(tmp_path), "validation"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    row_a = next(line for line in out.splitlines() if line.startswith("| dual:a |"))
    row_b = next(line for line in out.splitlines() if line.startswith("| dual:b |"))
    assert "| 4 | 0.750 |" in row_a and "+0.750" in row_a
    assert "| 4 | 0.250 |" in row_b and "+0.250" in row_b
    assert "ensemble − its best prompt (dual:a, chosen on these questions) = +0.000" in out


def test_prompt_results_score_each_prompts_answer_with_the_benchmarks_metric():
    ensemble = item("ensemble", 0, "two", "2", {"a": " 2.", "b": "3"})
    scored = {r.mode: r for r in prompt_results([ensemble])}
    assert set(scored) == {"dual:a", "dual:b"}
    assert scored["dual:a"].score == 1.0 and scored["dual:b"].score == 0.0  # exact_match normalises
    assert scored["dual:a"].generated_tokens == 0 and scored["dual:a"].record_id == "r0"


def test_the_answers_a_variant_changes_are_shown_per_question_type(tmp_path, capsys, monkeypatch):
    EvalResults(summaries=[summary("scenes", "direct", 0.5)]).save(tmp_path / "validation-base-scenes.json")
    kinds = ["count", "count", "colour", "colour"]
    direct = [item("direct", r, "no", "yes", kind=k) for r, k in enumerate(kinds)]
    answers = ["yes", "no", "no", "no"]
    adapter = [
        item("adapter", r, p, "yes", kind=k) for r, (p, k) in enumerate(zip(answers, kinds, strict=True))
    ]
    (tmp_path / "sdrt").mkdir()
    EvalResults(
        summaries=[summary("scenes", "direct", 0.0), summary("scenes", "adapter", 0.25)],
        comparisons=[Comparison("scenes", "adapter", "direct", 4, 0.25, 0.0, 0.75, 0.25)],
        items=direct + adapter,
    ).save(tmp_path / "sdrt" / "validation-results-scenes.json")
    monkeypatch.setattr(sys, "argv", ["study_table.py", str(tmp_path), "validation"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    assert "| sdrt | count | 2 | 0.000 | 0.500 | 50% |" in out
    assert "| sdrt | colour | 2 | 0.000 | 0.000 | 0% |" in out


def test_a_control_is_compared_paired_with_the_full_adapter(tmp_path, capsys, monkeypatch):
    EvalResults(summaries=[summary("scenes", "direct", 0.5)]).save(tmp_path / "validation-base-scenes.json")
    # Four questions, reference "yes": the adapter is right on 1 and 2, the control on 0, 1 and 2.
    for name, answers in (("sdrt", ["no", "yes", "yes", "no"]), ("lora-sft", ["yes", "yes", "yes", "no"])):
        (tmp_path / name).mkdir()
        adapter = [item("adapter", r, p, "yes") for r, p in enumerate(answers)]
        EvalResults(items=[item("direct", r, "no", "yes") for r in range(4)] + adapter).save(
            tmp_path / name / "validation-results-scenes.json"
        )
    monkeypatch.setattr(sys, "argv", ["study_table.py", str(tmp_path), "validation"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    assert "scenes: lora-sft − sdrt = +0.250 (" in out and "n = 4; 25% of answers differ)" in out
    assert "sdrt − sdrt" not in out


def test_a_variant_of_another_study_joins_the_table_and_can_be_the_reference(tmp_path, capsys, monkeypatch):
    more, fewer = tmp_path / "study-6k", tmp_path / "study"
    more.mkdir()
    EvalResults(summaries=[summary("scenes", "direct", 0.5)]).save(more / "validation-base-scenes.json")
    # Four questions, reference "yes": fewer traces' adapter right on 1, more traces' on 0, 1 and 2.
    for folder, answers in (
        (fewer / "sdrt", ["no", "yes", "no", "no"]),
        (more / "lora-sft", ["yes", "yes", "yes", "no"]),
    ):
        folder.mkdir(parents=True)
        adapter = [item("adapter", r, p, "yes") for r, p in enumerate(answers)]
        EvalResults(items=[item("direct", r, "no", "yes") for r in range(4)] + adapter).save(
            folder / "validation-results-scenes.json"
        )
    argv = [
        "study_table.py",
        str(more),
        "validation",
        "--with",
        str(fewer / "sdrt"),
        "--against",
        "study/sdrt",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    assert "scenes: lora-sft − study/sdrt = +0.500 (" in out and "50% of answers differ" in out

    monkeypatch.setattr(
        sys, "argv", ["study_table.py", str(more), "validation", "--with", str(tmp_path / "none")]
    )
    with pytest.raises(SystemExit, match="no validation-results"):
        runpy.run_path(str(SCRIPT), run_name="__main__")

    monkeypatch.setattr(sys, "argv", [*argv[:-1], "study/sdtr"])  # a misspelt reference
    with pytest.raises(
        SystemExit, match="--against study/sdtr: no such variant; known: lora-sft, study/sdrt"
    ):
        runpy.run_path(str(SCRIPT), run_name="__main__")


def test_a_variants_snapshots_are_rows_of_their_own_named_by_step(tmp_path, capsys, monkeypatch):
    EvalResults(summaries=[summary("scenes", "direct", 0.5)]).save(tmp_path / "validation-base-scenes.json")
    run = tmp_path / "ablation-ce-only"
    for folder, score in ((run, 0.62), (run / "snapshots" / "step-0000200", 0.55)):
        folder.mkdir(parents=True)
        results("scenes", "adapter", 0.50, score, 0.1).save(folder / "validation-results-scenes.json")
    (run / "snapshots" / "step-0000400").mkdir()  # not scored yet: no row
    monkeypatch.setattr(sys, "argv", ["study_table.py", str(tmp_path), "validation"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ablation-ce-only")]
    assert [row.split(" | ")[0] for row in rows] == ["| ablation-ce-only", "| ablation-ce-only @ 200"]
    assert "| 0.550 |" in rows[1] and "+0.050" in rows[1]
