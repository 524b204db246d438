"""The demo pipeline end to end on a tiny backend: every stage, the report, and reuse on a rerun."""

import dataclasses
import json

from sdrt.demo import DemoPlan, run_demo


def test_demo_end_to_end_and_rerun(tmp_path, capsys):
    plan = DemoPlan(
        model="tiny:llava",
        k=2,
        train_easy_vqa=4,
        train_scenes=4,
        eval_examples=3,
        distill_steps=2,
        batch_size=4,
        work_dir=tmp_path / "runs",
        report_dir=tmp_path / "report",
    )
    report = run_demo(plan)
    text = report.read_text()
    for mode in ("direct", "ensemble", "adapter"):
        for benchmark in ("easy-vqa", "scenes"):
            assert f"| {benchmark} | {mode} |" in text
    for picture in ("score_vs_cost.png", "per_prompt.png", "training.png"):
        assert (plan.report_dir / picture).stat().st_size > 1000
    assert (plan.work_dir / "adapter" / "adapter_config.json").exists()
    capsys.readouterr()

    run_demo(plan)  # a rerun reuses every finished stage (results read back with EvalResults.load)
    output = capsys.readouterr()
    assert "reusing" in output.out + output.err
    assert "0 new, 4 already on disk" in output.out + output.err

    # a changed plan redoes what it changes: the scene traces (new size), distillation (new
    # steps, new traces) and evaluation (new adapter); the easy-vqa traces are reused
    run_demo(dataclasses.replace(plan, distill_steps=3, train_scenes=5))
    text = "".join(capsys.readouterr())
    assert "traces: 0 new, 4 already on disk" in text
    assert "traces: 5 new, 0 already on disk" in text
    log = json.loads((plan.work_dir / "adapter" / "train_log.json").read_text())
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert "distill: reusing" not in text
    assert "evaluate: reusing" not in text
