"""``sdrt eval``: every (benchmark, mode) pair on the same seeded examples, scored with its cost.

Per item we keep the prediction, its score and what it cost (generated tokens, model calls,
seconds); aggregation (mean, bootstrap interval, paired differences) happens afterwards, so
the saved items can be re-scored or compared later without running a model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sdrt.data.records import VQARecord
from sdrt.evaluation.benchmarks import Benchmark, get_benchmark
from sdrt.evaluation.metrics import score
from sdrt.evaluation.stats import bootstrap_ci, paired_difference
from sdrt.models.base import VisionLanguageModel
from sdrt.progress import progress_bar
from sdrt.prompts.library import PromptLibrary, StudentLayout
from sdrt.reasoning.modes import (
    GenerationBudget,
    answer_with_mode,
    batch_size_for,
    length_batches,
    longest_record,
    mode_prompts,
    parse_mode,
)
from sdrt.traces.job import select_prompts


@dataclass
class ItemResult:
    benchmark: str
    mode: str
    record_id: str
    question: str
    prediction: str
    raw_prediction: str
    references: list[str]
    score: float
    generated_tokens: int
    model_calls: int
    seconds: float
    prompt_answers: dict[str, str] = field(default_factory=dict)  # dual-query modes: each prompt's answer
    choices: list[str] | None = None
    answer_index: int | None = None
    question_type: str | None = None  # e.g. a scene question's kind ("colour_beside"), when known


@dataclass
class ModeSummary:
    benchmark: str
    mode: str
    metric: str
    n: int
    score: float
    ci_low: float
    ci_high: float
    tokens_per_answer: float
    calls_per_answer: float
    seconds_per_answer: float


@dataclass
class Comparison:
    benchmark: str
    mode: str
    baseline: str
    n: int
    difference: float
    ci_low: float
    ci_high: float
    changed: float = 0.0  # share of the paired items whose answer differs from the baseline's


@dataclass
class EvalResults:
    summaries: list[ModeSummary] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    items: list[ItemResult] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "summaries": [asdict(s) for s in self.summaries],
            "comparisons": [asdict(c) for c in self.comparisons],
            "items": [asdict(i) for i in self.items],
        }

    @classmethod
    def load(cls, path: str | Path) -> EvalResults:
        """Results saved by ``save``, without running anything again."""
        data = json.loads(Path(path).read_text())
        return cls(
            summaries=[ModeSummary(**s) for s in data["summaries"]],
            comparisons=[Comparison(**c) for c in data["comparisons"]],
            items=[ItemResult(**i) for i in data["items"]],
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))


def evaluate_mode(
    model: VisionLanguageModel,
    benchmark: Benchmark,
    records: Sequence[VQARecord],
    mode: str,
    library: PromptLibrary,
    *,
    k: int = 3,
    prompt_ids: Sequence[str] | None = None,
    batch_size: int | None = 8,
    budget: GenerationBudget = GenerationBudget(),
    strategy: str = "majority",
    on_progress: Callable[[int], None] | None = None,
    layout: StudentLayout = StudentLayout(),
) -> list[ItemResult]:
    """``prompt_ids``: the ensemble's prompts (default: the first ``k`` suited to the benchmark).
    ``layout``: the attached adapter's student layout (mode ``adapter``).

    ``batch_size`` None: chosen from free GPU memory for this mode's rows (8 on a CPU).
    """
    ensemble_prompts = select_prompts(
        library, list(prompt_ids) if prompt_ids else None, k, benchmark.task_type
    )
    if batch_size is None and records:
        reasoning = mode_prompts(mode, ensemble_prompts, library.get)
        batch_size = batch_size_for(
            model,
            longest_record(records),
            reasoning,
            budget,
            open_ended=benchmark.prompt_style == "open",
            layout=layout,
        )
    batch_size = batch_size or 8
    items: dict[int, ItemResult] = {}
    for rows in length_batches(records, batch_size):
        batch = [records[row] for row in rows]
        began = time.perf_counter()
        images = model.encode_images([r.load_image() for r in batch])
        answers = answer_with_mode(
            model,
            batch,
            images,
            mode,
            ensemble_prompts,
            library.get,
            budget,
            strategy,
            open_ended=benchmark.prompt_style == "open",
            layout=layout,
        )
        seconds = (time.perf_counter() - began) / len(batch)
        for row, record, answer in zip(rows, batch, answers, strict=True):
            items[row] = ItemResult(
                benchmark=benchmark.name,
                mode=mode,
                record_id=record.id,
                question=record.question,
                prediction=answer.answer,
                raw_prediction=answer.raw_answer,
                references=list(record.answers),
                score=score(benchmark.metric, answer.answer, record),
                generated_tokens=answer.generated_tokens,
                model_calls=answer.model_calls,
                seconds=seconds,
                prompt_answers={t.prompt_id: t.answer for t in answer.traces},
                choices=record.choices,
                answer_index=record.answer_index,
                question_type=record.metadata.get("question_type"),
            )
        if on_progress:
            on_progress(len(batch))
    return [items[row] for row in range(len(records))]  # the records' order, whatever the batches'


def summarise(benchmark: Benchmark, mode: str, items: Sequence[ItemResult], seed: int = 0) -> ModeSummary:
    scores = [i.score for i in items]
    mean, low, high = bootstrap_ci(scores, seed=seed) if scores else (0.0, 0.0, 0.0)
    n = max(len(items), 1)
    return ModeSummary(
        benchmark=benchmark.name,
        mode=mode,
        metric=benchmark.metric,
        n=len(items),
        score=mean,
        ci_low=low,
        ci_high=high,
        tokens_per_answer=sum(i.generated_tokens for i in items) / n,
        calls_per_answer=sum(i.model_calls for i in items) / n,
        seconds_per_answer=sum(i.seconds for i in items) / n,
    )


def compare(
    benchmark: str,
    mode: str,
    baseline: str,
    items: Sequence[ItemResult],
    reference: Sequence[ItemResult],
    seed: int = 0,
) -> Comparison:
    """Paired difference mode − baseline on the same examples (matched by record id)."""
    base = {i.record_id: i for i in reference}
    pairs = [(i, base[i.record_id]) for i in items if i.record_id in base]
    diff, low, high = paired_difference([a.score for a, _ in pairs], [b.score for _, b in pairs], seed=seed)
    changed = sum(answer_changed(a, b) for a, b in pairs) / max(len(pairs), 1)
    return Comparison(benchmark, mode, baseline, len(pairs), diff, low, high, changed)


def answer_changed(item: ItemResult, baseline: ItemResult) -> bool:
    """Whether two answers to one question differ (case and surrounding space aside)."""
    return item.prediction.strip().lower() != baseline.prediction.strip().lower()


def prompt_results(items: Sequence[ItemResult]) -> list[ItemResult]:
    """Each prompt's own step-2 answer inside an ensemble, scored as an answer of mode ``dual:<id>``.

    The K answers an ensemble votes on are K dual-query answers already paid for, so scoring
    them gives every prompt's accuracy on the same questions without running it again. Their
    cost is not split by prompt: tokens, calls and seconds are left at 0.
    """
    out = []
    for item in items:
        metric = get_benchmark(item.benchmark).metric
        record = {"answers": item.references, "choices": item.choices, "answer_index": item.answer_index}
        for prompt_id, answer in item.prompt_answers.items():
            out.append(
                replace(
                    item,
                    mode=f"dual:{prompt_id}",
                    prediction=answer,
                    raw_prediction=answer,
                    score=score(metric, answer, record),
                    generated_tokens=0,
                    model_calls=0,
                    seconds=0.0,
                    prompt_answers={},
                )
            )
    return out


def changes_by_question_type(
    results: EvalResults, benchmark: str, mode: str, baseline: str
) -> list[tuple[str, int, float, float, float]]:
    """Per question type: (type, n, baseline score, mode score, share of answers changed)."""
    base = {i.record_id: i for i in results.items if i.benchmark == benchmark and i.mode == baseline}
    groups: dict[str, list[tuple[ItemResult, ItemResult]]] = {}
    for item in results.items:
        if item.benchmark == benchmark and item.mode == mode and item.record_id in base:
            groups.setdefault(item.question_type or "all", []).append((item, base[item.record_id]))
    return [
        (
            kind,
            len(pairs),
            sum(b.score for _, b in pairs) / len(pairs),
            sum(a.score for a, _ in pairs) / len(pairs),
            sum(answer_changed(a, b) for a, b in pairs) / len(pairs),
        )
        for kind, pairs in sorted(groups.items())
    ]


def evaluate(
    model: VisionLanguageModel,
    benchmarks: Sequence[Benchmark],
    modes: Sequence[str],
    library: PromptLibrary,
    *,
    data_dir: str | Path = "data",
    limit: int | None = None,
    seed: int = 0,
    split: str | None = None,
    k: int = 3,
    prompt_ids: Sequence[str] | None = None,
    batch_size: int | None = 8,
    budget: GenerationBudget = GenerationBudget(),
    strategy: str = "majority",
    adapter=None,
    skip_bad: bool = False,
) -> EvalResults:
    """Score each mode on the same seeded examples of each benchmark; compare modes to the first.

    ``split`` overrides the benchmarks' own (``validation`` scenes are for choosing settings).
    """
    for mode in modes:
        if parse_mode(mode)[0] == "adapter" and adapter is None:
            raise ValueError("mode 'adapter' needs an adapter (--adapter DIR)")
    results = EvalResults()
    for benchmark in benchmarks:
        records = benchmark.load(data_dir, split=split, limit=limit, seed=seed, skip_bad=skip_bad)
        by_mode: dict[str, list[ItemResult]] = {}
        for mode in modes:
            use_adapter = adapter is not None and parse_mode(mode)[0] == "adapter"
            with (
                adapter.attached(model) if use_adapter else nullcontext(),
                progress_bar(len(records), f"{benchmark.name} / {mode}", unit="ans") as advance,
            ):
                items = evaluate_mode(
                    model,
                    benchmark,
                    records,
                    mode,
                    library,
                    k=k,
                    prompt_ids=prompt_ids,
                    batch_size=batch_size,
                    budget=budget,
                    strategy=strategy,
                    on_progress=advance,
                    layout=adapter.layout if use_adapter else StudentLayout(),
                )
            by_mode[mode] = items
            results.items.extend(items)
            results.summaries.append(summarise(benchmark, mode, items, seed))
        baseline = modes[0]
        for mode in modes[1:]:
            results.comparisons.append(
                compare(benchmark.name, mode, baseline, by_mode[mode], by_mode[baseline], seed)
            )
    return results
