"""Smoke tests of the benchmark entry points on the tiny backend: they run and print sane ratios.

No timing thresholds: a busy machine may make any side slower. Only the shape of the output
(every figure line present, ratios finite and positive) is checked.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RATIO = re.compile(r"^(?P<name>[a-z -]+): baseline .*?, ratio (?P<ratio>\S+) \(")
MAIN_FIGURES = (
    "trace generation",
    "trace generation against the earlier batched path",
    "distillation step",
    "answering",
)


def run_module(args: list[str], tmp_path: Path) -> str:
    env = os.environ | {"SDRT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def ratios(output: str) -> dict[str, float]:
    found = {}
    for line in output.splitlines():
        match = RATIO.match(line)
        if match:
            found[match["name"]] = float(match["ratio"])
    return found


@pytest.fixture(scope="module")
def quick_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    return run_module(["benchmarks", "--quick", "--model", "tiny:llava"], tmp_path_factory.mktemp("bench"))


def test_quick_run_prints_every_main_figure_with_a_finite_positive_ratio(quick_output: str) -> None:
    found = ratios(quick_output)
    for name in MAIN_FIGURES:
        assert name in found, f"no {name!r} line in:\n{quick_output}"
        assert math.isfinite(found[name]) and found[name] > 0, (name, found[name])


def test_quick_run_prints_scaling_table_and_agreement(quick_output: str) -> None:
    assert "| K | 1 |" in quick_output
    # the batch-size rows generate the same three examples, one or three at a time
    assert re.search(r"\| batch size \| 1 \| 3 \|", quick_output)
    assert re.search(r"\| batch size \| 3 \| 3 \|", quick_output)
    assert re.search(r"answers agree \d+/\d+", quick_output)


def test_the_analysis_budget_is_chosen_from_the_command_line() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.__main__ import parse_args
    from benchmarks.common import Sizes

    args = parse_args(["--analysis-tokens", "128", "--quick"])
    sizes = Sizes.choose(args.quick, args.examples, args.k, args.batch_size, args.analysis_tokens)
    assert sizes.budget.analysis_tokens == 128
    assert Sizes.choose(False, None, None, None).budget.analysis_tokens == Sizes().analysis_tokens


def test_parse_ratios_reads_what_figures_print() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import Figure, parse_ratios

    line = Figure("answering", 24.0, 4.0, "tokens", 6.0, "fewer", target=">= 4x", met=True).line()
    assert parse_ratios(line) == {"answering": 6.0}


def test_write_doc_keeps_hand_written_text(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks import doc
    from benchmarks.common import Figure, Machine

    path = tmp_path / "performance.md"
    path.write_text(f"# Perf\n\nhand-written above\n\n{doc.BEGIN}\nold\n{doc.END}\n\nhand-written below\n")
    figure = Figure("trace generation", 3.0, 1.0, "s/example", 3.0, "speed-up", target=">= 3x", met=True)
    report = doc.Report("cmd", "tiny:llava", "", Machine("cpu", 2, "2.x", 1), [figure], "| t |", 1.0, "today")
    doc.write(report, path)
    text = path.read_text()
    assert "hand-written above" in text and "hand-written below" in text and "old" not in text
    assert "| trace generation (speed-up) |" in text


def test_gpu_script_parses_and_runs_tiny_on_cpu(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")], check=True)
    out = run_module(
        ["benchmarks.gpu", "--device", "cpu", "--scale", "tiny", "--out", str(tmp_path / "gpu")], tmp_path
    )
    found = ratios(out)
    assert all(name in found and found[name] > 0 for name in MAIN_FIGURES), out
    assert (tmp_path / "gpu" / "results.json").is_file()


def test_answering_measures_a_trained_adapter_when_given_one(tmp_path: Path, monkeypatch) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks import answering
    from benchmarks.common import load_bench_model, make_inputs
    from sdrt.adapters import save_adapter
    from sdrt.reasoning.modes import GenerationBudget

    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "cache"))
    model = load_bench_model("tiny:llava").model
    inputs = make_inputs(2, 2)
    budget = GenerationBudget(analysis_tokens=4, answer_tokens=6)
    trained = answering.sdrt_adapter(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(3.0 * torch.randn_like(parameter))  # far from the identity
    folder = save_adapter(trained, tmp_path / "adapter")
    fresh = answering.measure_adapter(model, inputs, budget, 2)
    loaded = answering.measure_adapter(model, inputs, budget, 2, folder)
    assert fresh.adapter.startswith("identity") and loaded.adapter.startswith("trained")
    # the folder's weights answered, not a fresh identity adapter
    assert [a.raw_answer for a in loaded.answers] != [a.raw_answer for a in fresh.answers]


def test_a_figure_true_by_construction_is_stated_as_a_property() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks import doc
    from benchmarks.common import Figure, Machine

    count = Figure("distillation parameters", 8.0, 1.0, "trainable", 0.125, "ours / LoRA", by_design=True)
    timing = Figure("distillation step", 2.0, 1.0, "s/step", 0.5, "time")
    assert "property of the design" in count.line() and "property" not in timing.line()
    report = doc.Report(
        "cmd", "tiny:llava", "", Machine("cpu", 2, "2.x", 1), [count, timing], "", 1.0, "today"
    )
    rows = [line for line in doc.render(report).splitlines() if line.startswith("| distillation")]
    assert ["property of the design" in row for row in rows] == [True, False]


def test_the_profiler_times_the_path_traces_run_not_the_plain_one(tmp_path: Path, monkeypatch) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import Sizes, load_bench_model, make_inputs
    from benchmarks.profile_hot_paths import phase_hooks
    from benchmarks.trace_generation import ours_batch

    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "cache"))
    model = load_bench_model("tiny:llava").model
    sizes = Sizes.choose(True, 2, 2, 2)
    inputs = make_inputs(sizes.examples, sizes.k)
    with phase_hooks(model) as stats:
        assert not model._hooked()  # a layer hook would switch the backend to its plain path
        ours_batch(model, inputs, slice(0, 2), sizes.budget)
    prefills = {kind: n for kind, n in stats.positions.items() if kind.startswith("prefill")}
    assert len(prefills) >= 3  # the shared prefix, each row's step-1 text, step 2's new tokens
    assert stats.calls["decode step (1 token)"] > 0


def test_the_teacher_fill_benchmark_compares_equal_targets(tmp_path: Path, tiny_model, make_traces) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks import teacher_fill
    from sdrt.distill.data import load_distill_examples
    from sdrt.distill.trainer import check_traces

    traces = make_traces(tmp_path / "traces", source="scenes", limit=6)
    examples = load_distill_examples(traces, library=check_traces(traces, tiny_model))
    figure = teacher_fill.measure(tiny_model, examples, batch_size=2, repeats=2)
    assert math.isfinite(figure.ratio) and figure.ratio > 0
    assert figure.details["examples"] == 6 and figure.details["rows per batch"] == 4
    assert figure.details["largest difference"] < 1e-4  # both sides computed the same targets
    assert figure.details["largest relative difference"] < 1e-5
    assert figure.details["padding sorted"] <= figure.details["padding by training batch"]


def test_cpu_ranks_script_traces_the_same_examples_in_one_process_and_in_ranks(tmp_path: Path) -> None:
    env = os.environ | {
        "SDRT_CACHE": str(tmp_path / "cache"),
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "ranks"),
        "MODEL": "tiny:llava",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "cpu_ranks.sh"), "5", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 processes of one thread" in done.stdout
    assert re.search(r"answers the same: \d+/15; analyses the same: \d+/15", done.stdout), done.stdout
    shards = sorted(path.name.split("-")[0] for path in (tmp_path / "ranks" / "ranks").glob("*.parquet"))
    assert set(shards) == {"rank0", "rank1"}  # each process wrote its own share
