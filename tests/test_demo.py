"""The demo pipeline end to end on a tiny backend: every stage, the report, and reuse on a rerun."""

import dataclasses
import json
from pathlib import Path

import yaml
from PIL import Image

from sdrt.adapters.config import AdapterConfig, SkipConfig
from sdrt.config import load_config
from sdrt.demo import SCENE_PROMPTS, DemoPlan, distill_config, run_demo
from sdrt.distill.config import DistillConfig
from sdrt.evaluation.evaluate import EvalResults

CONFIGS = Path(__file__).parents[1] / "configs"


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of the report's Markdown table rows (header and rule lines left out)."""
    rows = []
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if (
            line.startswith("|")
            and len(cells) > 4
            and not set(cells[0]) <= set("-:")
            and cells[0] != "benchmark"
        ):
            rows.append(cells)
    return rows


def test_demo_end_to_end_and_rerun(tmp_path, capsys):
    plan = DemoPlan(
        model="tiny:llava",
        k=2,
        train_easy_vqa=4,
        train_scenes=4,
        train_single_hop=3,
        eval_examples=3,
        guard_examples=2,
        distill_steps=2,
        batch_size=4,
        trace_batch_size=3,
        adapter=AdapterConfig(  # the study's placement, scaled to the two-layer tiny model
            layers=[1], positions=["first_prompt:8", "last_prompt:4", "answer"], skip=SkipConfig(enabled=True)
        ),
        work_dir=tmp_path / "runs",
        report_dir=tmp_path / "report",
    )
    report = run_demo(plan)
    text = report.read_text()
    results = EvalResults.load(plan.work_dir / "results.json")
    assert {(s.benchmark, s.mode) for s in results.summaries} == {
        ("scenes", "direct"),
        ("scenes", "ensemble"),
        ("scenes", "adapter"),
        *((b, m) for b in ("scenes-single-hop", "easy-vqa") for m in ("direct", "adapter")),
    }
    assert {s.n for s in results.summaries if s.benchmark == "scenes"} == {3}
    assert {s.n for s in results.summaries if s.benchmark != "scenes"} == {2}
    rows = {tuple(cells[:2]): cells for cells in table_rows(text)}
    for summary in results.summaries:  # the report shows the very scores the results hold
        cells = rows[(summary.benchmark, summary.mode)]
        assert float(cells[4]) == round(summary.score, 3), cells
    for c in results.comparisons:
        assert f"{c.benchmark}: {c.mode} − {c.baseline} = {c.difference:+.3f}" in text
    assert "adapter: rank 4 at layers 1, positions first_prompt:8, last_prompt:4, answer" in text
    assert "cross-entropy 1, KL 0; 2 steps of batch 4, 25% of each from the retained" in text
    for picture in ("score_vs_cost.png", "per_prompt.png", "training.png"):
        with Image.open(plan.report_dir / picture) as image:  # a real picture, not an empty file
            image.load()
            assert min(image.size) > 100
    assert (plan.work_dir / "adapter" / "adapter_config.json").exists()
    retained = json.loads((plan.work_dir / "adapter" / "direct_labels.json").read_text())
    assert len(retained) == 4 + 3  # easy-vqa and single-hop kept on the model's own answers
    capsys.readouterr()

    run_demo(plan)  # a rerun reuses every finished stage (results read back with EvalResults.load)
    output = capsys.readouterr()
    assert "reusing" in output.out + output.err
    assert "0 new, 4 already on disk" in output.out + output.err

    # a changed plan redoes what it changes: the scene traces (new size), distillation (new
    # steps, new traces) and evaluation (new adapter); the easy-vqa and single-hop traces are reused
    run_demo(dataclasses.replace(plan, distill_steps=3, train_scenes=5))
    text = "".join(capsys.readouterr())
    assert "traces: 0 new, 4 already on disk" in text and "traces: 0 new, 3 already on disk" in text
    assert "traces: 5 new, 0 already on disk" in text
    log = json.loads((plan.work_dir / "adapter" / "train_log.json").read_text())
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert "distill: reusing" not in text
    assert "evaluate reasoning: reusing" not in text and "evaluate guards: reusing" not in text


def test_the_demo_traces_the_prompts_the_study_chose():
    """One choice of scene prompts (made on validation scenes): the demo and the study agree."""
    folder = CONFIGS / "study"
    for source in ("scenes", "easy-vqa", "single-hop"):  # every traces config of the study
        study = yaml.safe_load((folder / f"traces-{source}.yaml").read_text())
        assert tuple(study["prompts"]) == SCENE_PROMPTS and study["k"] == len(SCENE_PROMPTS), source
    assert DemoPlan().prompts == SCENE_PROMPTS


def test_the_demo_distils_the_adapter_the_study_chose(tmp_path):
    """One choice of adapter, objective and batch mix (made on validation scenes): the demo's
    distillation is the study's (configs/study/sdrt.yaml with the overlays the study ran)."""
    study = load_config(
        DistillConfig,
        [
            CONFIGS / "study" / "sdrt.yaml",
            CONFIGS / "ablations" / "ce-only.yaml",
            CONFIGS / "sweep" / "positions-question-middle-retain-quarter.yaml",
        ],
        retain=["runs/study/traces-single-hop"],  # the study names its retained traces by flag
    )
    demo = distill_config(DemoPlan(work_dir=tmp_path))
    assert demo.adapter == study.adapter
    assert demo.loss == study.loss and demo.retain_share == study.retain_share
    assert demo.method == study.method and demo.lr == study.lr and demo.labels == study.labels
    assert not demo.cache_teacher  # cross-entropy alone reads no teacher targets
