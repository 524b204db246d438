"""``sdrt demo``: the whole method end to end on the embedded model, no labels used for training.

1. traces: K dual-query prompts on training questions of the multi-hop scenes, and on a few
   single-hop scene and easy-vqa ones;
2. distill: an SDRT adapter trained on the multi-hop traces (pseudo-labels, no references),
   the others retained (the model's own direct answers, so the guards stay as they were);
3. evaluate, on held-out questions: the multi-hop scenes with direct answers, the K-prompt
   ensemble and the adapter (the reasoning gap and what the adapter keeps of it), and the
   guards, single-hop scenes and easy-vqa, with direct answers and the adapter (what it must
   not break);
4. report: a Markdown table with paired intervals and the share of answers the adapter
   changes, plots, and a trace viewer in ``report/``.

Every stage writes to ``runs/demo/`` and is skipped on a rerun once its output is complete
(traces and distillation resume from where a killed run stopped). Each stage's inputs are
recorded in ``runs/demo/stages.json``: a stage whose inputs changed (steps, sizes, model, ...)
is redone from scratch, and so is every stage after it, whose inputs include its own.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdrt.adapters.config import AdapterConfig, SkipConfig
from sdrt.atomic import atomic_write_text
from sdrt.config import DataSource, LoadOptions, TraceConfig
from sdrt.distill.config import DistillConfig, LossWeights
from sdrt.distill.run import distill_with_progress
from sdrt.distill.trainer import run_fingerprint
from sdrt.evaluation.config import EvalConfig
from sdrt.evaluation.evaluate import EvalResults
from sdrt.evaluation.report import markdown_table, write_report
from sdrt.evaluation.run import print_table, results_table, run_evaluation
from sdrt.evaluation.viewer import write_viewer
from sdrt.models import load_model
from sdrt.models.precision import fast_dtype
from sdrt.progress import console
from sdrt.traces.job import run_trace_job
from sdrt.training.core import fingerprint_mismatch

TRAIN_SOURCES = ("easy-vqa", "scenes:multi-hop", "scenes:single-hop")
DISTILLED = "scenes:multi-hop"  # the others are retained: trained on the model's own direct answers
REASONING = ("scenes",)  # scored with every mode
GUARDS = ("scenes-single-hop", "easy-vqa")  # scored with direct answers and the adapter
EVAL_MODES = ("direct", "ensemble", "adapter")
STAGES_FILE = "stages.json"
# The scene prompts that beat direct answers most on validation scenes (docs/results.md, per
# prompt); the study's traces use the same (configs/study/traces-scenes.yaml, a test checks).
SCENE_PROMPTS = ("image_description", "counting", "spatial_relations")


def study_adapter() -> AdapterConfig:
    """The adapter the study's sweep chose on validation scenes (docs/results.md, the sweep).

    Rank 4 at the question's own positions from the middle of the stack; the study's configs
    say the same (configs/study/sdrt.yaml with its overlays; a test checks).
    """
    return AdapterConfig(
        rank=4,
        layers=[6, 10, 14, 18, 22, 26],
        positions=["first_prompt:32", "last_prompt:4", "answer"],
        skip=SkipConfig(enabled=True),
    )


def cross_entropy_only() -> LossWeights:
    """The study's objective: the hidden-state term was credited nothing (docs/results.md,
    ablations), and without it no teacher targets are computed."""
    return LossWeights(hidden=0.0, ce=1.0, kl=0.0)


@dataclass(frozen=True)
class DemoPlan:
    model: str = "embedded"
    # bfloat16 where the CPU has bfloat16 units (1.6x faster on AMX), float32 where it would be
    # emulated (8.8x slower): docs/performance.md, "Precision"
    dtype: str = field(default_factory=fast_dtype)
    prompts: tuple[str, ...] = SCENE_PROMPTS
    k: int = 3
    analysis_tokens: int = 128  # a whole scene's description or count list fits
    train_easy_vqa: int = 64
    train_scenes: int = 256  # multi-hop: the questions whose reasoning is distilled
    train_single_hop: int = 64
    eval_examples: int = 60  # held-out multi-hop scene questions
    guard_examples: int = 60  # held-out questions of each guard benchmark
    distill_steps: int = 200
    batch_size: int = 8  # of distillation and evaluation
    # examples per trace batch (K rows each): on a CPU a decode step over more rows costs less
    # per row (docs/performance.md, scaling), and traces are most of the demo's time
    trace_batch_size: int = 16
    adapter: AdapterConfig = field(default_factory=study_adapter)
    loss: LossWeights = field(default_factory=cross_entropy_only)
    retain_share: float | None = 0.25  # of every batch, from the retained questions (the study's)
    seed: int = 0
    work_dir: Path = Path("runs/demo")
    report_dir: Path = Path("report")

    @property
    def trace_dirs(self) -> dict[str, Path]:
        return {source: self.work_dir / f"traces-{source.replace(':', '-')}" for source in TRAIN_SOURCES}


# --- what each stage is made from ------------------------------------------------------------------


def trace_configs(plan: DemoPlan) -> dict[str, TraceConfig]:
    sizes = dict(
        zip(TRAIN_SOURCES, (plan.train_easy_vqa, plan.train_scenes, plan.train_single_hop), strict=True)
    )
    return {
        name: TraceConfig(
            model=plan.model,
            data=DataSource(source=name, split="train", limit=sizes[name], seed=plan.seed),
            prompts=list(plan.prompts),
            k=plan.k,
            analysis_tokens=plan.analysis_tokens,
            batch_size=plan.trace_batch_size,
            out=folder,
            dtype=plan.dtype,
        )
        for name, folder in plan.trace_dirs.items()
    }


def distill_config(plan: DemoPlan) -> DistillConfig:
    config = DistillConfig(
        model=plan.model,
        traces=[plan.trace_dirs[DISTILLED]],
        retain=[folder for source, folder in plan.trace_dirs.items() if source != DISTILLED],
        retain_share=plan.retain_share,
        out=plan.work_dir / "adapter",
        adapter=plan.adapter,
        loss=plan.loss,
        steps=plan.distill_steps,
        batch_size=plan.batch_size,
        seed=plan.seed,
        dtype=plan.dtype,
    )
    # teacher targets cached before the first step, where the loss reads them at all
    return config.model_copy(update={"cache_teacher": config.reads_teachers})


def trace_inputs(config: TraceConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude={"out"})


def distill_inputs(plan: DemoPlan) -> dict[str, Any]:
    """The distillation settings and the inputs of the traces it reads."""
    traces = {name: trace_inputs(config) for name, config in trace_configs(plan).items()}
    return {"settings": run_fingerprint(distill_config(plan)), "traces": traces}


def eval_configs(plan: DemoPlan) -> dict[str, EvalConfig]:
    """The reasoning gap with every mode; the guards with direct answers and the adapter."""
    common = {
        "model": plan.model,
        "adapter": plan.work_dir / "adapter",
        "seed": plan.seed,
        "prompts": list(plan.prompts),
        "k": plan.k,
        "analysis_tokens": plan.analysis_tokens,
        "batch_size": plan.batch_size,
        "dtype": plan.dtype,
    }
    return {
        "reasoning": EvalConfig(
            benchmarks=list(REASONING),
            modes=list(EVAL_MODES),
            limit=plan.eval_examples,
            out=plan.work_dir / "results-reasoning.json",
            **common,
        ),
        "guards": EvalConfig(
            benchmarks=list(GUARDS),
            modes=["direct", "adapter"],
            limit=plan.guard_examples,
            out=plan.work_dir / "results-guards.json",
            **common,
        ),
    }


def eval_inputs(plan: DemoPlan, config: EvalConfig) -> dict[str, Any]:
    """An evaluation's settings and the inputs of the adapter it scores."""
    settings = config.model_dump(mode="json", exclude={"out", "adapter"})
    return {**settings, "adapter": distill_inputs(plan)}


def same_inputs(plan: DemoPlan, stage: str, inputs: dict[str, Any], output: Path) -> bool:
    """True when ``output`` was made from ``inputs``; otherwise it is removed and ``inputs`` recorded.

    Inputs are recorded before the stage runs, so a killed stage resumes only into output made
    from the same inputs.
    """
    path = plan.work_dir / STAGES_FILE
    recorded = json.loads(path.read_text()) if path.exists() else {}
    if recorded.get(stage) == inputs:
        return True
    if output.exists():
        changed = fingerprint_mismatch(recorded[stage], inputs) if stage in recorded else ["not recorded"]
        console.print(f"{stage}: the plan changed ({', '.join(changed)}); redoing it")
        if output.is_dir():
            shutil.rmtree(output)
        else:
            output.unlink()
    recorded[stage] = inputs
    atomic_write_text(path, json.dumps(recorded, indent=1, sort_keys=True))
    return False


# --- the stages -------------------------------------------------------------------------------------


def run_traces(plan: DemoPlan, model) -> None:
    for name, config in trace_configs(plan).items():
        same_inputs(plan, f"traces {name}", trace_inputs(config), config.out)  # same: resume, else redo
        console.rule(f"traces: {name} (train, {config.data.limit} questions, K={plan.k})")
        stats = run_trace_job(config, model)
        console.print(f"traces: {stats.examples_done} new, {stats.examples_already_done} already on disk")


def run_distill(plan: DemoPlan, model) -> Path:
    config = distill_config(plan)
    out = config.out
    if same_inputs(plan, "distill", distill_inputs(plan), out) and (out / "adapter_config.json").exists():
        console.print(f"distill: reusing {out}")
        return out
    console.rule(f"distill: {plan.distill_steps} steps")
    return distill_with_progress(config, model).adapter_dir


def run_eval(plan: DemoPlan, model) -> EvalResults:
    """Both evaluations (each reused when made from the same inputs), as one set of results."""
    merged = EvalResults()
    for name, config in eval_configs(plan).items():
        if (
            same_inputs(plan, f"evaluate {name}", eval_inputs(plan, config), config.out)
            and config.out.exists()
        ):
            console.print(f"evaluate {name}: reusing {config.out}")
            part = EvalResults.load(config.out)
        else:
            console.rule(
                f"evaluate {name}: {', '.join(config.benchmarks)} ({config.limit} held-out questions each)"
            )
            part = run_evaluation(config, model)
        merged.summaries += part.summaries
        merged.comparisons += part.comparisons
        merged.items += part.items
    merged.save(plan.work_dir / "results.json")
    print_table(results_table(merged))
    return merged


def adapter_note(plan: DemoPlan) -> str:
    """What was distilled, in the report's words: placement, objective and schedule."""
    layers = ", ".join(map(str, plan.adapter.layers)) if plan.adapter.layers else "four of the upper half"
    retained = f"{plan.retain_share:.0%}" if plan.retain_share is not None else "a proportional share"
    return (
        f"adapter: rank {plan.adapter.rank} at layers {layers}, positions "
        f"{', '.join(plan.adapter.positions)}; loss weights hidden {plan.loss.hidden:g}, "
        f"cross-entropy {plan.loss.ce:g}, KL {plan.loss.kl:g}; {plan.distill_steps} steps of batch "
        f"{plan.batch_size}, {retained} of each from the retained questions"
    )


def run_demo(plan: DemoPlan = DemoPlan()) -> Path:
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(plan.model, LoadOptions(dtype=plan.dtype))
    run_traces(plan, model)
    adapter_dir = run_distill(plan, model)
    results = run_eval(plan, model)
    notes = [
        f"model: {plan.model} ({plan.dtype}); K = {plan.k} prompts ({', '.join(plan.prompts[: plan.k])}); "
        f"traces on {plan.train_scenes} multi-hop scene training questions, distilled, and on "
        f"{plan.train_single_hop} single-hop scene and {plan.train_easy_vqa} easy-vqa ones, retained "
        "(trained on the model's own direct answers); no labels used",
        adapter_note(plan),
        f"held out: {plan.eval_examples} multi-hop scene questions (test scenes) scored with every "
        f"mode; the guards, {plan.guard_examples} single-hop scene and easy-vqa questions, with "
        "direct answers and the adapter",
        "scores: exact match; tokens/answer and calls/answer count every generation step",
    ]
    viewer, _ = write_viewer(
        list(plan.trace_dirs.values()), plan.report_dir / "viewer", results=plan.work_dir / "results.json"
    )
    notes.append(f"what each prompt wrote, example by example: [trace viewer](viewer/{viewer.name})")
    report = write_report(
        results,
        plan.report_dir,
        train_logs={"sdrt": adapter_dir / "train_log.json"},
        title="SDRT demo",
        notes=notes,
    )
    console.print(f"report: {report}")
    print(markdown_table(results.summaries))
    return report
