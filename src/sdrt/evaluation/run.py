"""``sdrt eval`` and ``sdrt benchmarks``: load, evaluate, print tables, save results."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from sdrt.config import LoadOptions
from sdrt.evaluation.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from sdrt.evaluation.evaluate import EvalResults, evaluate
from sdrt.models import load_model
from sdrt.progress import console
from sdrt.prompts.library import PromptLibrary
from sdrt.reasoning.modes import GenerationBudget


def run_evaluation(
    model_name: str,
    benchmark_names: Sequence[str],
    modes: Sequence[str],
    *,
    own_data: Sequence[Benchmark] = (),
    adapter: Path | None = None,
    data_dir: Path = Path("data"),
    limit: int | None = None,
    seed: int = 0,
    split: str | None = None,
    k: int = 3,
    prompt_ids: list[str] | None = None,
    prompts_yaml: Path | None = None,
    batch_size: int = 8,
    analysis_tokens: int | None = None,
    out: Path = Path("runs/results.json"),
    skip_bad: bool = False,
    load: LoadOptions | None = None,
) -> EvalResults:
    """``prompts_yaml`` adds or overrides prompts; ``prompt_ids`` choose the ensemble's prompts."""
    chosen = [get_benchmark(name) for name in benchmark_names]  # unknown names fail before loading
    chosen += list(own_data)  # the user's own files (``Benchmark.from_file``)
    library = PromptLibrary.load(prompts_yaml)
    for prompt_id in prompt_ids or []:
        library.get(prompt_id)  # an unknown id fails before the model loads
    model = load_model(model_name, load)
    loaded_adapter = None
    if adapter is not None:
        from sdrt.adapters.files import load_adapter

        loaded_adapter = load_adapter(adapter, model)
    results = evaluate(
        model,
        chosen,
        modes,
        library,
        data_dir=data_dir,
        limit=limit,
        seed=seed,
        split=split,
        k=k,
        prompt_ids=prompt_ids,
        batch_size=batch_size,
        budget=GenerationBudget(analysis_tokens=analysis_tokens) if analysis_tokens else GenerationBudget(),
        adapter=loaded_adapter,
        skip_bad=skip_bad,
    )
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
