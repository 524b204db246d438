"""``python -m benchmarks --model NAME``: every figure, one line each (baseline, ours, ratio)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from benchmarks import answering, distill_step, doc, scaling, trace_generation
from benchmarks.common import (
    Figure,
    Inputs,
    LoadedModel,
    Sizes,
    load_bench_model,
    machine,
    make_inputs,
    set_threads,
)

FIGURES = ("traces", "answering", "distill", "scaling")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--model", default="embedded", help="embedded, tiny:llava, or a model folder")
    parser.add_argument("--examples", type=int, help="examples for trace generation and answering")
    parser.add_argument("--k", type=int, help="dual-query prompts per example")
    parser.add_argument("--batch-size", type=int, help="examples per batch (traces, answering, distillation)")
    parser.add_argument(
        "--analysis-tokens",
        type=int,
        help="step-1 budget of trace generation and answering (default 48; the study's traces use 128)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--write-doc", action="store_true", help="rewrite the figures in docs/performance.md")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine more threads stall in parallel regions)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--adapter",
        type=Path,
        help="an adapter folder from sdrt distill for the answering figure (default: a fresh identity one)",
    )
    parser.add_argument("--figures", default=",".join(FIGURES), help=f"subset of {','.join(FIGURES)}")
    args = parser.parse_args(argv)
    chosen = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; known: {', '.join(FIGURES)}")
    args.figures = chosen
    return args


def emit(figure: Figure, collected: list[Figure]) -> None:
    collected.append(figure)
    print(figure.line(), flush=True)


def run_generation_figures(
    loaded: LoadedModel,
    inputs: Inputs,
    sizes: Sizes,
    args: argparse.Namespace,
    collected: list[Figure],
) -> None:
    chosen = args.figures
    model = loaded.model
    trace_run = None
    trace_generation.warm_up(model, inputs, sizes.budget)
    if "traces" in chosen:
        trace_run = trace_generation.measure(model, inputs, sizes.budget, sizes.batch_size)
        for figure in trace_generation.figures(trace_run):
            emit(figure, collected)
    if "answering" in chosen:
        ensemble = answering.ensemble_run(model, inputs, sizes.budget, sizes.batch_size, trace_run)
        direct = answering.measure_adapter(model, inputs, sizes.budget, sizes.batch_size, args.adapter)
        emit(answering.figure(ensemble, direct), collected)


def run_distill_figures(
    loaded: LoadedModel, inputs: Inputs, sizes: Sizes, args: argparse.Namespace, threads: int
) -> list[Figure]:
    if loaded.model.device.type == "cuda":
        ours, lora = distill_step.run_in_process(loaded.model, inputs, sizes)
    else:
        ours, lora = distill_step.run_in_subprocesses(args.model, sizes, threads, args.device)
    return distill_step.figures(ours, lora)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    threads = set_threads(args.threads)
    sizes = Sizes.choose(args.quick, args.examples, args.k, args.batch_size, args.analysis_tokens)
    loaded = load_bench_model(args.model, device=args.device)
    inputs = make_inputs(sizes.examples, sizes.k)
    command = "python -m benchmarks " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    print(f"# model {args.model}: {loaded.note or 'as loaded'}", flush=True)
    print(f"# machine: {machine(threads).describe()}", flush=True)
    print(
        f"# sizes: {sizes.examples} examples, K={sizes.k}, batch {sizes.batch_size}, "
        f"budgets {sizes.analysis_tokens}+{sizes.answer_tokens} tokens, greedy",
        flush=True,
    )
    collected: list[Figure] = []
    run_generation_figures(loaded, inputs, sizes, args, collected)
    if "distill" in args.figures:
        for figure in run_distill_figures(loaded, inputs, sizes, args, threads):
            emit(figure, collected)
    table = ""
    if "scaling" in args.figures:
        table = scaling.table(scaling.measure_scaling(loaded.model, inputs, sizes))
        print(table, flush=True)
    elapsed = time.perf_counter() - started
    print(f"# total {elapsed:.0f} s", flush=True)
    if args.write_doc:
        report = doc.Report(
            command=command,
            model=args.model,
            model_note=loaded.note,
            machine=machine(threads),
            figures=collected,
            scaling_table=table,
            seconds=elapsed,
            date=time.strftime("%Y-%m-%d"),
        )
        print(f"# wrote {doc.write(report, Path(doc.DOC))}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
