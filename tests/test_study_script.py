"""scripts/study.sh: which stages run, in which split, with a stand-in for the sdrt command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "study.sh"


def run_study(tmp_path: Path, **env: str) -> list[list[str]]:
    log = tmp_path / "calls.txt"
    fake = tmp_path / "sdrt"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    variables = os.environ | {"SDRT": str(fake), "PYTHON": "true", "WORK": str(tmp_path / "work")} | env
    subprocess.run(["bash", str(SCRIPT)], check=True, env=variables, timeout=60)
    return [line.split() for line in log.read_text().splitlines()]


def test_runs_names_the_trainings_and_validation_scores_no_easy_vqa(tmp_path):
    calls = run_study(tmp_path, RUNS="sdrt lora-sft")
    trained = [call[call.index("--out") + 1].rsplit("/", 1)[1] for call in calls if call[0] == "distill"]
    assert trained == ["sdrt", "lora-sft"]
    evaluated = [call[call.index("--benchmark") + 1] for call in calls if call[0] == "eval"]
    assert "easy-vqa" not in evaluated  # no validation split
    assert evaluated.count("scenes") == 3  # the base models, then each of the two adapters
    assert all(call[call.index("--split") + 1] == "validation" for call in calls if call[0] == "eval")


def test_the_test_pass_runs_every_training_and_scores_easy_vqa(tmp_path):
    calls = run_study(tmp_path, SPLIT="test")
    assert sum(call[0] == "distill" for call in calls) == 8  # the adapter, 5 ablations, 2 controls
    assert [call[0] for call in calls[:6]] == ["traces"] * 3 + ["label-quality"] * 3
    for call in (call for call in calls if call[0] == "distill"):  # multi-hop distilled, guards kept
        traced = [call[i + 1].rsplit("/", 1)[1] for i, flag in enumerate(call) if flag == "--traces"]
        kept = [call[i + 1].rsplit("/", 1)[1] for i, flag in enumerate(call) if flag == "--retain"]
        assert traced == ["traces-scenes"] and kept == ["traces-easy-vqa", "traces-single-hop"]
    easy = [call for call in calls if call[0] == "eval" and "easy-vqa" in call]
    assert len(easy) == 9 and all("ensemble" not in call for call in easy)


def test_an_unknown_training_name_stops_the_study_before_anything_runs(tmp_path):
    import pytest

    with pytest.raises(subprocess.CalledProcessError):
        run_study(tmp_path, RUNS="sdrt,lora-sft")
    assert not (tmp_path / "calls.txt").exists()


def test_sweep_runs_overlay_their_config_on_the_adapter_and_stay_out_of_the_test_pass(tmp_path):
    import pytest

    calls = run_study(tmp_path, RUNS="sdrt sweep-rank-8")
    distills = [call for call in calls if call[0] == "distill"]
    assert [call[call.index("--out") + 1].rsplit("/", 1)[1] for call in distills] == ["sdrt", "sweep-rank-8"]
    configs = [distills[1][i + 1] for i, flag in enumerate(distills[1]) if flag == "--config"]
    assert configs == ["configs/study/sdrt.yaml", "configs/sweep/rank-8.yaml"]
    assert (Path(__file__).parents[1] / configs[1]).is_file()
    with pytest.raises(subprocess.CalledProcessError):
        run_study(tmp_path, SPLIT="test", RUNS="sweep-rank-8")


def test_the_reference_labels_diagnostic_runs_only_when_named_with_its_config_over_the_adapters(tmp_path):
    from sdrt.config import load_config
    from sdrt.distill.config import DistillConfig

    calls = run_study(tmp_path, SPLIT="test", RUNS="reference-labels")
    (distill,) = [call for call in calls if call[0] == "distill"]
    assert distill[distill.index("--out") + 1].endswith("/reference-labels")
    configs = [distill[i + 1] for i, flag in enumerate(distill) if flag == "--config"]
    assert configs == ["configs/study/sdrt.yaml", "configs/study/reference-labels.yaml"]
    root = Path(__file__).parents[1]
    merged = load_config(DistillConfig, [root / c for c in configs])
    assert merged.labels == "reference" and not merged.reads_teachers
    assert sum(call[0] == "eval" and "--adapter" in call for call in calls) == 3  # scored like the rest


def test_every_sweep_config_is_a_valid_overlay_that_changes_the_study_adapter():
    from sdrt.config import load_config
    from sdrt.distill.config import DistillConfig

    root = Path(__file__).parents[1]
    base = root / "configs/study/sdrt.yaml"
    sweeps = sorted((root / "configs" / "sweep").glob("*.yaml"))
    assert len(sweeps) >= 6
    retained = {"retain": ["runs/study/traces-single-hop"]}  # as the study passes them (--retain)
    for sweep in sweeps:
        changed = load_config(DistillConfig, [base, sweep], **retained)
        assert changed != load_config(DistillConfig, base, **retained), sweep.name


def test_the_retain_quarter_overlay_gives_a_control_the_data_mix_of_the_chosen_adapter():
    from sdrt.config import load_config
    from sdrt.distill.config import DistillConfig

    root = Path(__file__).parents[1]
    retained = {"retain": ["runs/study/traces-single-hop"]}
    chosen = load_config(
        DistillConfig,
        [
            root / "configs/study/sdrt.yaml",
            root / "configs/sweep/positions-question-middle-retain-quarter.yaml",
        ],
        **retained,
    )
    plain = load_config(DistillConfig, root / "configs/study/lora-sft.yaml", **retained)
    control = load_config(
        DistillConfig,
        [root / "configs/study/lora-sft.yaml", root / "configs/study/retain-quarter.yaml"],
        **retained,
    )
    assert control.retain_share == chosen.retain_share is not None
    assert control.model_copy(update={"retain_share": plain.retain_share}) == plain  # nothing else changes


def test_more_multi_hop_traces_are_distilled_beside_the_first_set(tmp_path):
    import pytest

    calls = run_study(tmp_path, RUNS="sdrt", DISTILLED="scenes scenes-more")
    made = [call[call.index("--config") + 1] for call in calls if call[0] == "traces"]
    sets = ("scenes", "scenes-more", "easy-vqa", "single-hop")
    assert made == [f"configs/study/traces-{s}.yaml" for s in sets]
    assert all((Path(__file__).parents[1] / config).is_file() for config in made)
    (distill,) = [call for call in calls if call[0] == "distill"]
    traced = [distill[i + 1].rsplit("/", 1)[1] for i, flag in enumerate(distill) if flag == "--traces"]
    assert traced == ["traces-scenes", "traces-scenes-more"]
    with pytest.raises(subprocess.CalledProcessError):  # a retained set is not distilled
        run_study(tmp_path, DISTILLED="scenes single-hop")
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == len(calls)  # nothing more ran


def test_the_extra_multi_hop_traces_share_no_scenes_with_the_first_set():
    import yaml

    root = Path(__file__).parents[1] / "configs" / "study"
    first, more = (yaml.safe_load((root / f"traces-{s}.yaml").read_text()) for s in ("scenes", "scenes-more"))
    assert first["data"]["seed"] != more["data"]["seed"] and more["data"]["seed"] != 0  # 0: alignment
    assert {k: v for k, v in first.items() if k not in ("data", "out")} == {
        k: v for k, v in more.items() if k not in ("data", "out")
    }


def test_more_guard_traces_are_retained_and_a_multi_hop_set_is_never_retained(tmp_path):
    import pytest

    retained = "easy-vqa single-hop single-hop-more"
    calls = run_study(tmp_path, RUNS="sdrt", DISTILLED="scenes scenes-more", RETAINED=retained)
    (distill,) = [call for call in calls if call[0] == "distill"]
    kept = [distill[i + 1].rsplit("/", 1)[1] for i, flag in enumerate(distill) if flag == "--retain"]
    assert kept == [f"traces-{s}" for s in retained.split()]
    assert (Path(__file__).parents[1] / "configs/study/traces-single-hop-more.yaml").is_file()
    for refused in ("easy-vqa scenes-more", "easy-vqa single-hop-typo"):
        with pytest.raises(subprocess.CalledProcessError):
            run_study(tmp_path, RETAINED=refused)
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == len(calls)  # nothing more ran


def test_overlays_come_last_and_every_snapshot_but_the_final_one_is_scored(tmp_path):
    for step in (200, 400, 600):  # what distill would leave with snapshot_every: 200, STEPS=600
        (tmp_path / "work" / "ablation-ce-only" / "snapshots" / f"step-{step:07d}").mkdir(parents=True)
    overlays = "configs/ablations/ce-only.yaml configs/curve/snapshots.yaml"
    calls = run_study(tmp_path, RUNS="ablation-ce-only", STEPS="600", OVERLAYS=overlays)
    (distill,) = [call for call in calls if call[0] == "distill"]
    configs = [distill[i + 1] for i, flag in enumerate(distill) if flag == "--config"]
    assert configs == [
        "configs/study/sdrt.yaml",
        "configs/ablations/ce-only.yaml",  # the run's own
        "configs/ablations/ce-only.yaml",  # the overlays, last
        "configs/curve/snapshots.yaml",
    ]
    evals = [call for call in calls if call[0] == "eval" and "--adapter" in call]
    scored = [call[call.index("--adapter") + 1] for call in evals]
    snapshots = sorted({path.rsplit("/", 1)[1] for path in scored if "/snapshots/" in path})
    assert snapshots == ["step-0000200", "step-0000400"]  # the final one is the adapter itself
    assert any(path.endswith("/ablation-ce-only") for path in scored)


def test_a_missing_overlay_stops_the_study_before_anything_runs(tmp_path):
    import pytest

    with pytest.raises(subprocess.CalledProcessError):
        run_study(tmp_path, RUNS="sdrt", OVERLAYS="configs/curve/no-such.yaml")
    assert not (tmp_path / "calls.txt").exists()


def test_model_reaches_every_stage_and_defaults_to_the_shipped_weights(tmp_path):
    (tmp_path / "candidate").mkdir()
    (tmp_path / "shipped").mkdir()
    calls = run_study(tmp_path / "candidate", RUNS="sdrt", MODEL="embedded:runs/align/weights")
    staged = [call for call in calls if call[0] in ("traces", "distill", "eval")]
    assert {call[0] for call in staged} == {"traces", "distill", "eval"}
    assert all(call[call.index("--model") + 1] == "embedded:runs/align/weights" for call in staged)
    shipped = run_study(tmp_path / "shipped", RUNS="sdrt")
    assert {call[call.index("--model") + 1] for call in shipped if call[0] != "label-quality"} == {"embedded"}


def test_three_hop_questions_are_traced_and_scored_with_every_mode(tmp_path):
    import pytest

    calls = run_study(tmp_path, RUNS="sdrt", HELD_OUT="scenes-three-hop", DISTILLED="scenes-three-hop")
    assert calls[0][:3] == ["traces", "--config", "configs/study/traces-scenes-three-hop.yaml"]
    ensembles = [call for call in calls if call[0] == "eval" and "ensemble" in call]
    assert [call[call.index("--benchmark") + 1] for call in ensembles] == ["scenes-three-hop"]
    evaluated = {call[call.index("--benchmark") + 1] for call in calls if call[0] == "eval"}
    assert evaluated == {"scenes-three-hop", "scenes-single-hop"}
    with pytest.raises(subprocess.CalledProcessError):
        run_study(tmp_path, HELD_OUT="scenes-four-hop")


def test_an_overlay_that_undoes_what_a_run_changes_stops_the_study_and_names_the_fields(tmp_path):
    """The CE-only loss laid over the KL loss sweep would silently train CE only."""
    import sys

    env = os.environ | {
        "SDRT": str(tmp_path / "never-called"),
        "PYTHON": sys.executable,
        "WORK": str(tmp_path / "work"),
        "RUNS": "sweep-loss-kl",
        "OVERLAYS": "configs/sweep/positions-question-middle.yaml configs/ablations/ce-only.yaml",
    }
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "configs/ablations/ce-only.yaml sets loss.hidden, loss.kl" in done.stderr
    assert "positions-question-middle" not in done.stderr  # it sets nothing the sweep sets


def test_an_overlay_that_leaves_a_runs_own_settings_alone_is_laid_over_it(tmp_path):
    import sys

    (tmp_path / "work").mkdir()  # the closing table reads it
    calls = run_study(
        tmp_path,
        PYTHON=sys.executable,
        RUNS="ablation-no-skip sweep-loss-kl",
        OVERLAYS="configs/sweep/positions-question-middle-retain-quarter.yaml",
    )
    distills = [call for call in calls if call[0] == "distill"]
    configs = [[call[i + 1] for i, flag in enumerate(call) if flag == "--config"] for call in distills]
    overlay = "configs/sweep/positions-question-middle-retain-quarter.yaml"
    assert configs == [
        ["configs/study/sdrt.yaml", "configs/ablations/no-skip.yaml", overlay],
        ["configs/study/sdrt.yaml", "configs/sweep/loss-kl.yaml", overlay],
    ]


def test_overridden_fields_are_compared_at_the_depth_the_deep_merge_replaces_them():
    import runpy

    overridden = runpy.run_path(str(SCRIPT.parent / "overlay_conflicts.py"))["overridden"]
    own = {"loss": {"hidden": 1.0, "ce": 1.0, "kl": 0.5}, "adapter": {"rank": 4}}
    assert overridden(own, {"loss": {"ce": 1.0}}) == []  # the same value changes nothing
    assert overridden(own, {"loss": {"kl": 0.0}, "adapter": {"gate": {"enabled": True}}}) == ["loss.kl"]
    assert overridden({"adapter": {"layers": [1, 2]}}, {"adapter": {"layers": [1, 3]}}) == ["adapter.layers"]
