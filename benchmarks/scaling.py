"""How the cost of batched trace generation grows with K, with the examples, with the analysis
and with the batch size.

Each row varies one thing from a base point (the first examples, K and budgets of the run) and
times our batched path only; seconds per example and per generated token show where batching
stops paying (on a CPU, once prefill of the long step-2 prompts dominates). The batch-size rows
generate the same examples (``Sizes.scaling_batch_examples``) in batches of each size, which is
the choice a trace job makes (``sdrt traces --batch-size``).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.common import Inputs, Sizes, make_inputs
from benchmarks.trace_generation import measure
from sdrt.models.base import VisionLanguageModel
from sdrt.reasoning.modes import GenerationBudget


@dataclass
class Row:
    varied: str
    value: int
    examples: int
    k: int
    analysis_tokens: int
    seconds: float
    generated_tokens: int

    @property
    def per_example(self) -> float:
        return self.seconds / self.examples

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.seconds / max(self.generated_tokens, 1)


def _row(
    model: VisionLanguageModel, inputs: Inputs, varied: str, value: int, budget: GenerationBudget, batch: int
) -> Row:
    run = measure(model, inputs, budget, batch, with_baseline=False, repeats=1)
    return Row(
        varied,
        value,
        len(inputs.records),
        len(inputs.prompts),
        budget.analysis_tokens,
        run.ours.seconds,
        run.ours_tokens,
    )


def measure_scaling(model: VisionLanguageModel, inputs: Inputs, sizes: Sizes) -> list[Row]:
    base_n = min(sizes.scaling_base_examples, len(inputs.records))
    budget = sizes.budget
    rows = []
    for k in sizes.scaling_ks:
        rows.append(_row(model, inputs.first(base_n, k), "K", k, budget, base_n))
    for n in sizes.scaling_examples:
        if n <= len(inputs.records):
            rows.append(_row(model, inputs.first(n, sizes.k), "examples", n, budget, n))
    for tokens in sizes.scaling_analysis:
        longer = GenerationBudget(analysis_tokens=tokens, answer_tokens=sizes.answer_tokens)
        rows.append(_row(model, inputs.first(base_n, sizes.k), "analysis tokens", tokens, longer, base_n))
    same = make_inputs(sizes.scaling_batch_examples, sizes.k)  # more examples than the run's
    model.encode_images(same.images)  # warm the image-feature cache: no row pays it cold
    for size in sizes.scaling_batches:
        rows.append(_row(model, same, "batch size", size, budget, size))
    return rows


def table(rows: list[Row]) -> str:
    """A Markdown table (it goes both to the terminal and into docs/performance.md)."""
    lines = [
        "| varied | value | examples | K | step-1 budget | seconds | s/example | generated tokens "
        "| ms/token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.varied} | {r.value} | {r.examples} | {r.k} | {r.analysis_tokens} | {r.seconds:.2f} "
            f"| {r.per_example:.2f} | {r.generated_tokens} | {r.ms_per_token:.1f} |"
        )
    return "\n".join(lines)
