"""scripts/testbed_eval.py: the reasoning summary from stored answers (no model is run)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "testbed_eval.py"
SKILLS = {"strong": "description", "weak_a": "objects", "weak_b": "relations"}


@pytest.fixture(scope="module")
def script() -> dict:
    return runpy.run_path(str(SCRIPT))


@pytest.fixture(scope="module")
def records(script):
    import argparse

    return script["reasoning_records"](argparse.Namespace(split="validation", n=40, seed=0, kind="multi-hop"))


def stored_rows(records, strong_wrong_every: int = 10) -> list[dict]:
    """'strong' is right but on every tenth record; the two weak prompts share one wrong answer
    on every other record, where direct answers are wrong too."""
    rows = []
    for i, record in enumerate(records):
        truth = record.answers[0]
        wrong = "purple" if truth != "purple" else "orange"
        weak = wrong if i % 2 else truth
        answers = {"strong": wrong if i % strong_wrong_every == 0 else truth, "weak_a": weak, "weak_b": weak}
        rows.append(
            {
                "id": record.id,
                "question": record.question,
                "question_type": record.metadata["question_type"],
                "answers": list(record.answers),
                "direct": weak,
                "prompts": [
                    {"prompt_id": pid, "analysis": "", "answer": a, "logprob": -1.0, "mean_logprob": -0.5}
                    for pid, a in answers.items()
                ],
            }
        )
    return rows


def test_summary_scores_every_mode_on_the_same_records(script, records) -> None:
    from sdrt.prompts.library import PromptLibrary

    summary = script["reasoning_summary"](stored_rows(records), records, SKILLS, PromptLibrary.builtin())
    modes = summary["modes"]
    assert modes["direct"]["score"] == pytest.approx(0.5)
    assert modes["dual:strong"]["score"] == pytest.approx(0.9)
    assert modes["ensemble (K=3, all scene prompts)"]["score"] == pytest.approx(0.5)  # outvoted
    assert summary["versus_direct"]["dual:strong"]["difference"] == pytest.approx(0.4)
    assert summary["best_single_prompt"] == "strong"
    assert summary["prompts"]["weak_a"]["agrees_with_direct"] == 1.0
    assert summary["prompts"]["strong"]["agrees_with_direct"] == pytest.approx(0.4)  # even rows, but 4
    assert "ensemble (K=3, reliability-weighted)" in modes


def test_stored_records_of_another_sample_are_refused(script, records) -> None:
    from sdrt.prompts.library import PromptLibrary

    rows = stored_rows(records)[::-1]
    with pytest.raises(SystemExit, match="not this split's sample"):
        script["reasoning_summary"](rows, records, SKILLS, PromptLibrary.builtin())


def test_from_records_needs_no_model(script, records, tmp_path, monkeypatch) -> None:
    stored = tmp_path / "rows.jsonl"
    stored.write_text("".join(json.dumps(r) + "\n" for r in stored_rows(records)))
    monkeypatch.setitem(
        script["main"].__globals__,
        "read_weights",
        lambda folder: ({"align_config": {"analysis_prompts": SKILLS}}, {}),
    )
    monkeypatch.setitem(script["main"].__globals__, "EmbeddedVLM", None)  # loading a model would fail
    out = tmp_path / "summary.json"
    assert script["main"](["--n", "40", "--from-records", str(stored), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["reasoning"]["modes"]["dual:strong"]["score"] == pytest.approx(0.9)


def test_three_hop_kind_reasons_on_three_hop_records(script, records, tmp_path, monkeypatch) -> None:
    """--kind three-hop summarises answers to the harder questions, and refuses multi-hop ones."""
    import argparse

    sample = argparse.Namespace(split="validation", n=40, seed=0, kind="three-hop")
    harder = script["reasoning_records"](sample)
    assert {r.metadata["hops"] for r in harder} == {3}
    assert {r.id for r in harder}.isdisjoint(r.id for r in records)
    monkeypatch.setitem(
        script["main"].__globals__,
        "read_weights",
        lambda folder: ({"align_config": {"analysis_prompts": SKILLS}}, {}),
    )
    for rows, kind in ((harder, "three-hop"), (records, "multi-hop")):
        stored = tmp_path / f"{kind}.jsonl"
        stored.write_text("".join(json.dumps(r) + "\n" for r in stored_rows(rows)))
        out = tmp_path / f"{kind}.json"
        args = ["--n", "40", "--kind", kind, "--from-records", str(stored), "--out", str(out)]
        assert script["main"](args) == 0
        assert json.loads(out.read_text())["kind"] == kind
    with pytest.raises(SystemExit, match="not this split's sample"):
        multi_hop = str(tmp_path / "multi-hop.jsonl")
        script["main"](["--n", "40", "--kind", "three-hop", "--from-records", multi_hop])


def test_step_two_is_scored_apart_after_exact_analyses(script, records) -> None:
    """Reading errors (wrong after an exact analysis) are told apart from seeing errors."""
    from sdrt.data.scene_analyses import analysis
    from sdrt.data.scenes import scene_by_id

    rows = stored_rows(records)
    for i, (row, record) in enumerate(zip(rows, records, strict=True)):
        exact = analysis("description", scene_by_id(record.metadata["scene_id"]), record.question)
        strong = next(t for t in row["prompts"] if t["prompt_id"] == "strong")
        strong["analysis"] = exact if i % 4 else "From left to right: nothing."
        strong["answer"] = record.answers[0] if i % 4 else "purple"
        if i % 8 == 1:  # an exact analysis read wrongly
            strong["answer"] = "orange" if record.answers[0] != "orange" else "purple"
    by_id = {r.id: r for r in records}
    quality = script["analysis_quality"](rows, by_id, SKILLS)["strong"]
    exact_n = sum(1 for i in range(len(records)) if i % 4)
    misread = sum(1 for i in range(len(records)) if i % 8 == 1)
    assert quality["exact"] == pytest.approx(exact_n / len(records), abs=1e-3)
    assert quality["answer_after_exact_analysis"] == {
        "n": exact_n,
        "accuracy": round(1 - misread / exact_n, 3),
    }
    assert quality["answer_after_other_analysis"] == {"n": len(records) - exact_n, "accuracy": 0.0}


def test_prompt_subsets_are_ranked_by_their_majority_vote(script, records) -> None:
    """Two weak prompts outvote the strong one in the full ensemble; a subset without one of
    them ties, broken by likelihood (equal here) and then order, so the strong prompt wins."""
    from sdrt.prompts.library import PromptLibrary

    summary = script["reasoning_summary"](stored_rows(records), records, SKILLS, PromptLibrary.builtin())
    ranked = summary["ensemble_subsets_ranked_here"]
    full = summary["modes"]["ensemble (K=3, all scene prompts)"]["score"]
    assert len(ranked) == 4  # three pairs and the triple
    assert [entry["score"] for entry in ranked] == sorted((entry["score"] for entry in ranked), reverse=True)
    assert ranked[0]["score"] > full and "strong" in ranked[0]["prompts"]
    assert {"prompts": ["strong", "weak_a", "weak_b"], "score": full} in ranked


def summary_argv(script, tmp_path, monkeypatch) -> tuple[list[str], Path]:
    """Arguments that summarise tmp_path/ours.jsonl into the returned file, weights of SKILLS faked."""
    monkeypatch.setitem(
        script["main"].__globals__,
        "read_weights",
        lambda folder: ({"align_config": {"analysis_prompts": SKILLS}}, {}),
    )
    out = tmp_path / "summary.json"
    return ["--n", "40", "--from-records", str(tmp_path / "ours.jsonl"), "--out", str(out)], out


def test_other_weights_are_compared_pairwise_with_the_gain_over_direct(
    script, records, tmp_path, monkeypatch
) -> None:
    """Better weights: 'strong' right on more records while direct answers stay the same."""
    ours, theirs = stored_rows(records, strong_wrong_every=1000), stored_rows(records, strong_wrong_every=2)
    for name, rows in (("ours", ours), ("theirs", theirs)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv, out = summary_argv(script, tmp_path, monkeypatch)
    assert script["main"]([*argv, "--baseline-records", str(tmp_path / "theirs.jsonl")]) == 0
    versus = json.loads(out.read_text())["versus_baseline"]
    strong_then = sum(i % 2 != 0 for i in range(len(records))) / len(records)  # wrong on even rows
    assert versus["score"]["direct"]["difference"] == 0.0
    assert versus["score"]["dual:strong"]["difference"] == pytest.approx(1 - (1 / len(records)) - strong_then)
    assert versus["gain_over_direct"]["dual:strong"]["difference"] == pytest.approx(
        versus["score"]["dual:strong"]["difference"]
    )  # direct answers did not change, so the gain grew by what the prompt gained
    with pytest.raises(SystemExit):
        script["parse_args"](["--baseline-records", str(tmp_path / "theirs.jsonl")])


def as_eval_results(rows: list[dict], records) -> dict:
    """The items an `sdrt eval --mode direct --mode ensemble` run would have written for these rows."""
    refs = {r.id: r.answers[0] for r in records}
    items = []
    for row in rows:
        answers = {t["prompt_id"]: t["answer"] for t in row["prompts"]}
        voted = max(set(answers.values()), key=list(answers.values()).count)
        for mode, prediction, extra in (("direct", row["direct"], {}), ("ensemble", voted, answers)):
            score = float(prediction == refs[row["id"]])
            items.append(
                {
                    "benchmark": "scenes",
                    "mode": mode,
                    "record_id": row["id"],
                    "score": score,
                    "prompt_answers": extra,
                }
            )
    return {"summaries": [], "comparisons": [], "items": items}


def test_other_weights_scored_by_sdrt_eval_are_compared_on_its_prompts_and_ensemble(
    script, records, tmp_path, monkeypatch
) -> None:
    ours, theirs = stored_rows(records, strong_wrong_every=1000), stored_rows(records, strong_wrong_every=2)
    (tmp_path / "ours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ours))
    (tmp_path / "theirs.json").write_text(json.dumps(as_eval_results(theirs, records)))
    argv, out = summary_argv(script, tmp_path, monkeypatch)
    assert script["main"]([*argv, "--baseline-eval", str(tmp_path / "theirs.json")]) == 0
    versus = json.loads(out.read_text())["versus_baseline_eval"]
    n = len(records)
    assert versus["prompts"] == ["strong", "weak_a", "weak_b"]
    assert versus["score"]["direct"]["difference"] == 0.0
    assert versus["score"]["dual:strong"]["difference"] == pytest.approx((n // 2 - 1) / n)  # 19 more right
    # the two weak prompts outvote 'strong' wherever they are wrong: the ensembles are the same
    assert versus["score"]["ensemble"]["difference"] == 0.0
    assert versus["theirs"]["ensemble"]["score"] == versus["ours"]["ensemble"]["score"] == 0.5
    (tmp_path / "short.json").write_text(json.dumps(as_eval_results(theirs[:-1], records)))
    with pytest.raises(SystemExit, match="lack"):
        script["main"]([*argv, "--baseline-eval", str(tmp_path / "short.json")])
