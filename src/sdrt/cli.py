"""The ``sdrt`` command: one typed function per stage, no logic of its own."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sdrt.config import ConfigError, TraceConfig, load_config

app = typer.Typer(
    help="Self-distillation with diverse reasoning traces for vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)  # a message stays one line in a pipe or a CI log

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="embedded | tiny:<family> | model folder | hub id")
]
DeviceOpt = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda")]
DTypeOpt = Annotated[
    str | None,
    typer.Option("--dtype", help="float32 (default) | bfloat16 | float16: bfloat16 for a 7B model on a GPU"),
]
DeviceMapOpt = Annotated[
    str | None, typer.Option("--device-map", help="'auto': spread a model larger than one GPU over the GPUs")
]
AttnOpt = Annotated[
    str | None,
    typer.Option("--attn", help="attention kernel: sdpa | eager | flash_attention_2 (if installed)"),
]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="skip bad records (counted and logged)")]
PromptsOpt = Annotated[
    str | None,
    typer.Option(
        "--prompts",
        help="comma-separated prompt ids, a YAML file of extra or overriding prompts, or both "
        "(my.yaml,id1,id2)",
    ),
]


@app.command()
def models() -> None:
    """List the model names sdrt knows."""
    from sdrt.models import available_models

    for name in available_models():
        print(name)


@app.command()
def ask(
    image: Annotated[Path, typer.Option(help="image file")],
    question: Annotated[str, typer.Option(help="the question")],
    model: ModelOpt = "embedded",
    mode: Annotated[str, typer.Option(help="direct | dual:<prompt-id> | ensemble | adapter")] = "direct",
    adapter: Annotated[
        Path | None,
        typer.Option(help="an SDRT adapter folder: answers in one pass (modes direct and adapter only)"),
    ] = None,
    k: Annotated[int, typer.Option(help="prompts in the ensemble")] = 3,
    prompts: PromptsOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = None,
    device_map: DeviceMapOpt = None,
    attn: AttnOpt = None,
) -> None:
    """Answer one question about one image; the answer is the last line printed."""
    from sdrt.ask import ask_question

    prompt_ids, prompts_yaml = _split_prompts_option(prompts)
    result = ask_question(
        model,
        image,
        question,
        mode=mode,
        adapter=adapter,
        k=k,
        prompt_ids=prompt_ids,
        prompts_yaml=prompts_yaml,
        load=_load_options(device, dtype, device_map, attn),
    )
    for trace in result.traces:
        err.print(f"[bold]{trace.prompt_id}[/bold] analysis: {trace.analysis}")
        err.print(f"[bold]{trace.prompt_id}[/bold] answer: {trace.answer}")
    print(result.answer)


@app.command()
def traces(
    model: Annotated[str | None, typer.Option("--model", "-m", help="model name (default: embedded)")] = None,
    benchmark: Annotated[
        str | None, typer.Option("--benchmark", "--data", help="easy-vqa | scenes | .jsonl | folder")
    ] = None,
    split: Annotated[str | None, typer.Option(help="data split (default: train)")] = None,
    layout: Annotated[str | None, typer.Option(help="published layout of a Parquet folder")] = None,
    prompts: PromptsOpt = None,
    k: Annotated[int | None, typer.Option(help="prompts per example (default: 3)")] = None,
    limit: Annotated[int | None, typer.Option(help="seeded sample of this many examples")] = None,
    seed: Annotated[int | None, typer.Option(help="sampling seed (default: 0)")] = None,
    strategy: Annotated[str | None, typer.Option(help="majority | loglik (default: majority)")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="examples per batch (default: what free GPU memory holds; 8 on a CPU)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="trace folder, resumable (default: runs/traces)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML TraceConfig; flags override it")] = None,
    skip_bad: Annotated[
        bool | None, typer.Option("--skip-bad/--no-skip-bad", help="skip bad records (counted and logged)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cpu)")] = None,
    dtype: DTypeOpt = None,
    device_map: DeviceMapOpt = None,
    attn: AttnOpt = None,
) -> None:
    """Generate K dual-query reasoning traces per example and their ensemble pseudo-labels."""
    from sdrt.traces.job import run_trace_job

    prompt_ids, prompts_yaml = _split_prompts_option(prompts)
    data = {"source": benchmark, "split": split, "layout": layout, "limit": limit, "seed": seed}
    cfg = load_config(
        TraceConfig,
        config,
        model=model,
        data={key: value for key, value in data.items() if value is not None} or None,
        prompts=prompt_ids,
        prompts_yaml=prompts_yaml,
        k=k,
        strategy=strategy,
        batch_size=batch_size,
        out=out,
        skip_bad=skip_bad,
        device=device,
        dtype=dtype,
        device_map=device_map,
        attn_implementation=attn,
    )
    stats = run_trace_job(cfg)
    err.print(
        f"done: {stats.examples_done} new examples, {stats.examples_already_done} already on disk, "
        f"{stats.examples_skipped_bad} skipped as bad, "
        f"{stats.generated_tokens} tokens in {stats.seconds:.1f} s"
    )
    err.print(f"read them in a browser: sdrt view {cfg.out}  (writes {cfg.out / 'viewer' / 'index.html'})")


@app.command()
def align(
    config: Annotated[Path | None, typer.Option(help="YAML AlignConfig; flags override it")] = None,
    out: Annotated[Path | None, typer.Option(help="where the trained projector goes")] = None,
    steps: Annotated[int | None, typer.Option(help="optimiser steps")] = None,
) -> None:
    """Train the embedded VLM's projector (and LoRA) on easy-vqa and scene descriptions."""
    from sdrt.training.align import AlignConfig
    from sdrt.training.align import align as run_align

    cfg = load_config(AlignConfig, config, out=out, steps=steps)
    from sdrt.progress import progress_bar

    with progress_bar(cfg.steps, "align", unit="step") as advance:
        path = run_align(cfg, on_step=lambda step, loss: advance(1, loss=loss))
    print(path)


@app.command()
def distill(
    model: Annotated[str | None, typer.Option("--model", "-m", help="model name (default: embedded)")] = None,
    traces: Annotated[
        list[Path] | None,
        typer.Option(help="trace folder from `sdrt traces` (repeatable; default runs/traces)"),
    ] = None,
    retain: Annotated[
        list[Path] | None,
        typer.Option(help="trace folder of questions to keep answered as the model does (repeatable)"),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="sdrt (the adapter, default) or lora-sft (the LoRA control on the same labels)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="adapter folder, resumable (default: runs/adapter)")
    ] = None,
    config: Annotated[
        list[Path] | None,
        typer.Option(
            help="YAML DistillConfig (repeatable: later files override earlier ones); flags override it"
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="optimiser steps")] = None,
    cache_teacher: Annotated[
        bool | None, typer.Option("--cache-teacher/--online-teacher", help="cache teacher targets on disk")
    ] = None,
    teacher_cache: Annotated[
        Path | None, typer.Option(help="teacher cache folder to share between runs")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cpu)")] = None,
    dtype: DTypeOpt = None,
    device_map: DeviceMapOpt = None,
    attn: AttnOpt = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="discard the checkpoints in --out and train from step 0")
    ] = False,
) -> None:
    """Train SDRT adapters so that one direct pass matches the K reasoning teachers.

    A rerun into the same --out resumes its checkpoint only with the same settings.
    """
    from sdrt.distill.config import DistillConfig
    from sdrt.distill.run import distill_with_progress

    cfg = load_config(
        DistillConfig,
        config,
        model=model,
        traces=traces,
        retain=retain,
        method=method,
        out=out,
        steps=steps,
        cache_teacher=cache_teacher,
        teacher_cache_dir=teacher_cache,
        device=device,
        dtype=dtype,
        device_map=device_map,
        attn_implementation=attn,
    )
    result = distill_with_progress(cfg, restart=restart)
    print(result.adapter_dir)


@app.command(name="eval")
def evaluate(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="embedded (default) | tiny:<family> | folder | hub id")
    ] = None,
    benchmark: Annotated[list[str] | None, typer.Option(help="benchmark name (repeatable)")] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            help="your own data: a .jsonl file or a Parquet file/folder (repeatable); needs --metric"
        ),
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="metric for --data: exact_match, vqa_accuracy, anls, ... (see docs)")
    ] = None,
    layout: Annotated[str | None, typer.Option(help="published layout of a --data Parquet folder")] = None,
    task_type: Annotated[
        str, typer.Option(help="task type of --data (chooses the ensemble's prompts)")
    ] = "scene",
    mode: Annotated[
        list[str] | None, typer.Option(help="direct | dual:<id> | ensemble | adapter (repeatable)")
    ] = None,
    adapter: Annotated[Path | None, typer.Option(help="SDRT adapter folder for mode 'adapter'")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="folder holding the published benchmarks")] = None,
    limit: Annotated[int | None, typer.Option(help="seeded sample of this many examples")] = None,
    seed: Annotated[int | None, typer.Option(help="sampling and bootstrap seed (default 0)")] = None,
    k: Annotated[int | None, typer.Option(help="prompts in the ensemble (default 3)")] = None,
    split: Annotated[
        str | None, typer.Option(help="split to score instead of each benchmark's own (e.g. validation)")
    ] = None,
    analysis_tokens: Annotated[
        int | None, typer.Option(help="step-1 token budget of the reasoning modes (default 48)")
    ] = None,
    prompts: PromptsOpt = None,
    batch_size: Annotated[
        int | None, typer.Option(help="examples per batch (default: what free GPU memory holds; 8 on a CPU)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="results JSON, per-item predictions beside it (default runs/results.json)"),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML EvalConfig; flags override it")] = None,
    skip_bad: Annotated[
        bool | None, typer.Option("--skip-bad/--no-skip-bad", help="skip bad records (counted and logged)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cpu)")] = None,
    dtype: DTypeOpt = None,
    device_map: DeviceMapOpt = None,
    attn: AttnOpt = None,
) -> None:
    """Score modes on benchmarks with the community metrics, each beside its cost per answer."""
    from sdrt.evaluation.config import EvalConfig
    from sdrt.evaluation.run import run_evaluation

    if data and metric is None:
        raise ConfigError("--data needs --metric (exact_match, vqa_accuracy, anls, relaxed_accuracy, ...)")
    prompt_ids, prompts_yaml = _split_prompts_option(prompts)
    own = [{"file": f, "metric": metric, "layout": layout, "task_type": task_type} for f in data or []]
    cfg = load_config(
        EvalConfig,
        config,
        model=model,
        benchmarks=benchmark,
        data=own or None,
        modes=mode,
        adapter=adapter,
        data_dir=data_dir,
        limit=limit,
        seed=seed,
        split=split,
        k=k,
        prompts=prompt_ids,
        prompts_yaml=prompts_yaml,
        batch_size=batch_size,
        analysis_tokens=analysis_tokens,
        out=out,
        skip_bad=skip_bad,
        device=device,
        dtype=dtype,
        device_map=device_map,
        attn_implementation=attn,
    )
    run_evaluation(cfg)


def _load_options(device: str, dtype: str | None, device_map: str | None, attn: str | None):
    """The model placement flags as one validated ``LoadOptions`` (a bad value: one clear line)."""
    from sdrt.config import LoadOptions

    values = {"device": device, "dtype": dtype, "device_map": device_map, "attn_implementation": attn}
    return load_config(LoadOptions, None, **values)


@app.command(name="label-quality")
def label_quality(
    traces_dir: Annotated[Path, typer.Argument(help="trace folder from `sdrt traces`")],
    metric: Annotated[str, typer.Option(help="metric to score labels with")] = "exact_match",
    out: Annotated[Path | None, typer.Option(help="also write the report here (JSON)")] = None,
) -> None:
    """Pseudo-label accuracy against the references (never trained on), per prompt and threshold."""
    import json

    from sdrt.evaluation.label_quality import label_quality as measure
    from sdrt.evaluation.label_quality import print_label_quality

    report = measure(traces_dir, metric)
    print_label_quality(report, traces_dir)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")


@app.command()
def view(
    traces_dirs: Annotated[list[Path], typer.Argument(help="trace folders from `sdrt traces`")],
    results: Annotated[
        Path | None, typer.Option(help="results JSON of `sdrt eval`, shown beside the traces")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="viewer folder (default: TRACES_DIR/viewer)")] = None,
    data_dir: Annotated[Path, typer.Option(help="benchmark data, for images of evaluated examples")] = Path(
        "data"
    ),
) -> None:
    """Write a static trace viewer (index.html and images/) that opens from disk, no server."""
    from sdrt.evaluation.viewer import write_viewer

    page, stats = write_viewer(
        traces_dirs, out or traces_dirs[0] / "viewer", results=results, data_dir=data_dir
    )
    err.print(
        f"{stats.examples} examples ({stats.traced} traced, {stats.result_only} from results only), "
        f"{stats.images} images, {stats.missing_images} examples without an image"
    )
    print(page.resolve().as_uri())


@app.command()
def benchmarks(
    data_dir: Annotated[Path, typer.Option(help="folder holding the published benchmarks")] = Path("data"),
) -> None:
    """List the benchmarks, their metric and whether their data is present."""
    from sdrt.evaluation.run import print_benchmarks

    print_benchmarks(data_dir)


@app.command()
def demo(
    eval_examples: Annotated[int | None, typer.Option(help="held-out multi-hop scene questions")] = None,
    guard_examples: Annotated[
        int | None, typer.Option(help="held-out questions of each guard (single-hop scenes, easy-vqa)")
    ] = None,
    train_scenes: Annotated[
        int | None, typer.Option(help="multi-hop scene training questions traced (no labels used)")
    ] = None,
    train_single_hop: Annotated[
        int | None, typer.Option(help="single-hop scene training questions traced, retained")
    ] = None,
    train_easy_vqa: Annotated[
        int | None, typer.Option(help="easy-vqa training questions traced, retained")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="distillation steps")] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="bfloat16 | float32 (default: bfloat16 where the CPU has bfloat16 units)"),
    ] = None,
    work_dir: Annotated[Path, typer.Option(help="where stages keep their outputs")] = Path("runs/demo"),
    report_dir: Annotated[Path, typer.Option(help="where the report goes")] = Path("report"),
) -> None:
    """End to end on the embedded model: traces -> distillation -> evaluation -> report.

    An option left out keeps the demo's own plan (``sdrt.demo.DemoPlan``), sized for 2 CPU cores.
    """
    from sdrt.demo import DemoPlan, run_demo

    given = {
        "eval_examples": eval_examples,
        "guard_examples": guard_examples,
        "train_scenes": train_scenes,
        "train_single_hop": train_single_hop,
        "train_easy_vqa": train_easy_vqa,
        "distill_steps": steps,
        "dtype": dtype,
    }
    chosen = {name: value for name, value in given.items() if value is not None}
    run_demo(DemoPlan(work_dir=work_dir, report_dir=report_dir, **chosen))


def _split_prompts_option(value: str | None) -> tuple[list[str] | None, Path | None]:
    """``--prompts``: the ids named (None: the library's default choice) and the YAML file, if any."""
    if value is None:
        return None, None
    items = [v.strip() for v in value.split(",") if v.strip()]
    files = [item for item in items if item.endswith((".yaml", ".yml"))]
    if len(files) > 1:
        raise ValueError(f"--prompts takes one YAML file, got {', '.join(files)}")
    ids = [item for item in items if item not in files]
    return ids or None, Path(files[0]) if files else None


def _quiet_transformers() -> None:
    """Our own progress bars say what runs; the per-load bars of transformers only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main() -> None:
    """Console entry: known failures print one clear line and exit 2, never a traceback."""
    from sdrt.data.records import DataError
    from sdrt.distill.trainer import DistillError
    from sdrt.models.base import ModelError
    from sdrt.traces.store import TraceStoreError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_transformers()
    # ValueError covers the config, data, prompt and adapter errors, which all derive from it
    known = (DataError, ModelError, DistillError, TraceStoreError, KeyError, ValueError, FileNotFoundError)
    try:
        app()
    except known as exc:
        if os.environ.get("SDRT_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        err.print(f"[bold red]error:[/bold red] {message}")
        sys.exit(2)


if __name__ == "__main__":
    main()
