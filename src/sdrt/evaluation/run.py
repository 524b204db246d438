"""``sdrt eval`` and ``sdrt benchmarks``: load, evaluate, print tables, save results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from sdrt.evaluation.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from sdrt.evaluation.config import EvalConfig
from sdrt.evaluation.evaluate import EvalResults, evaluate
from sdrt.models import VisionLanguageModel, load_model
from sdrt.progress import console
from sdrt.prompts.library import PromptLibrary
from sdrt.reasoning.modes import GenerationBudget


def run_evaluation(config: EvalConfig, model: VisionLanguageModel | None = None) -> EvalResults:
    """Score ``config``'s modes on its benchmarks and files; save results, print the tables.

    ``model``: an already loaded model (the demo passes its own); else ``config`` loads one.
    """
    chosen = [get_benchmark(name) for name in config.benchmark_names]  # unknown names fail before loading
    chosen += [  # the user's own files
        Benchmark.from_file(d.file, d.metric, layout=d.layout, task_type=d.task_type) for d in config.data
    ]
    library = PromptLibrary.load(config.prompts_yaml)
    for prompt_id in config.prompts or []:
        library.get(prompt_id)  # an unknown id fails before the model loads
    model = model or load_model(config.model, config.load_options)
    loaded_adapter = None
    if config.adapter is not None:
        from sdrt.adapters.files import load_adapter

        loaded_adapter = load_adapter(config.adapter, model)
    budget = (
        GenerationBudget(analysis_tokens=config.analysis_tokens)
        if config.analysis_tokens
        else GenerationBudget()
    )
    results = evaluate(
        model,
        chosen,
        config.modes,
        library,
        data_dir=config.data_dir,
        limit=config.limit,
        seed=config.seed,
        split=config.split,
        k=config.k,
        prompt_ids=config.prompts,
        batch_size=config.batch_size,
        budget=budget,
        adapter=loaded_adapter,
        skip_bad=config.skip_bad,
    )
    out = config.out
    results.save(out)
    write_predictions(results, out.with_suffix(".predictions.jsonl"))
    print_table(results_table(results))
    for c in results.comparisons:
        console.print(
            f"{c.benchmark}: {c.mode} - {c.baseline} = {c.difference:+.4f} "
            f"(95% CI {c.ci_low:+.4f} .. {c.ci_high:+.4f}, n={c.n}; {100 * c.changed:.0f}% of answers differ)"
        )
    console.print(f"results: {out}")
    return results


def write_predictions(results: EvalResults, path: Path) -> None:
    with path.open("w") as handle:
        for item in results.to_json()["items"]:
            handle.write(json.dumps(item) + "\n")


def print_table(table: Table, to: Console = console) -> None:
    """Every column in full where the output is not a terminal (a pipe, a CI log).

    Rich lays tables out to 80 columns there and cuts cells to fit ("bench…", "exact…").
    """
    if to.is_terminal:
        to.print(table)
        return
    needed = Measurement.get(to, to.options.update(max_width=100_000), table).maximum
    Console(file=to.file, width=max(needed, to.width)).print(table)


def results_table(results: EvalResults) -> Table:
    table = Table(title="sdrt eval")
    for column in ("benchmark", "mode", "metric", "n", "score", "95% CI", "tokens/ans", "calls/ans", "s/ans"):
        table.add_column(column, justify="right" if column not in ("benchmark", "mode", "metric") else "left")
    for s in results.summaries:
        table.add_row(
            s.benchmark,
            s.mode,
            s.metric,
            str(s.n),
            f"{s.score:.4f}",
            f"{s.ci_low:.3f}-{s.ci_high:.3f}",
            f"{s.tokens_per_answer:.1f}",
            f"{s.calls_per_answer:.1f}",
            f"{s.seconds_per_answer:.3f}",
        )
    return table


def print_benchmarks(data_dir: Path) -> None:
    table = Table(title=f"benchmarks (data dir: {data_dir})")
    for column in ("name", "metric", "task type", "split", "data"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", overflow="fold")
    for b in BENCHMARKS.values():
        present = "built in" if b.builtin else ("present" if b.is_available(data_dir) else "missing")
        table.add_row(b.name, b.metric, b.task_type, b.split, present, b.description)
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # piped output is not cut to 80 columns
