"""Trace generation: batched dual-query answering vs one ``generate`` call per example, prompt and step.

Ours is what ``sdrt traces`` runs: per batch of examples, the images are encoded once, the K
prompts of an example share one prefill of the system turn and image, and step 2 continues
step 1's KV cache (``generate_two_step``). The baseline is the way one would write it by hand:
for every example, every prompt and both steps, an independent ``model.generate`` on the raw
PIL image. The batched path as it was before the cache reuse (every row its own prefill, step 2
from scratch, the embedded backend's KV cache grown by concatenation) is measured beside both.
Same records, prompts, token budgets, greedy decoding. The sides alternate batch by batch, so a
busy machine slows all alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from benchmarks.common import Figure, Inputs, Stopwatch, batches
from sdrt.models.base import VisionLanguageModel
from sdrt.reasoning.extract import extract_short_answer
from sdrt.reasoning.modes import Answer, GenerationBudget, answer_dual_query

SPEEDUP_TARGET = 3.0
PLAIN_SPEEDUP_TARGET = 2.0
REPEATS = 3  # runs of each batched side per batch; the fastest counts


class PlainBatched:
    """The model as the batched path used it before cache reuse: no prefix shared, step 2 redone,
    and (embedded backend) the KV cache grown by concatenation instead of preallocated."""

    def __init__(self, model: VisionLanguageModel) -> None:
        with_kv_cache = getattr(model, "with_kv_cache", None)
        self.model = with_kv_cache("dynamic") if with_kv_cache else model

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def generate_two_step(self, images, first, follow_up, *, first_tokens: int, second_tokens: int):
        distinct = [copy.copy(image) for image in images]  # one object per row: nothing is shared
        return VisionLanguageModel.generate_two_step(
            self, distinct, first, follow_up, first_tokens=first_tokens, second_tokens=second_tokens
        )


@dataclass
class NaiveTrace:
    analysis: str
    raw_answer: str
    answer: str
    tokens: int


@dataclass
class TraceRun:
    """Both sides of one measurement, with what they generated."""

    examples: int
    k: int
    naive: Stopwatch = field(default_factory=Stopwatch)
    ours: Stopwatch = field(default_factory=Stopwatch)  # per batch, the fastest of its runs
    ours_mean: Stopwatch = field(default_factory=Stopwatch)  # per batch, the mean of its runs
    plain: Stopwatch = field(default_factory=Stopwatch)
    naive_traces: list[list[NaiveTrace]] = field(default_factory=list)
    ours_answers: list[Answer] = field(default_factory=list)
    plain_answers: list[Answer] = field(default_factory=list)

    @property
    def naive_tokens(self) -> int:
        return sum(t.tokens for row in self.naive_traces for t in row)

    @property
    def ours_tokens(self) -> int:
        return sum(a.generated_tokens for a in self.ours_answers)

    def agreement(self) -> tuple[int, int, int]:
        """(same final answers, same analyses, pairs compared) over every (example, prompt)."""
        same_answer = same_analysis = total = 0
        for naive_row, answer in zip(self.naive_traces, self.ours_answers, strict=True):
            for naive, trace in zip(naive_row, answer.traces, strict=True):
                total += 1
                same_answer += naive.answer == trace.answer
                same_analysis += naive.analysis == trace.analysis
        return same_answer, same_analysis, total


def naive_traces(
    model: VisionLanguageModel, inputs: Inputs, index: int, budget: GenerationBudget
) -> list[NaiveTrace]:
    """One example, the unbatched way: 2K independent calls, each re-reading the raw image."""
    record, image = inputs.records[index], inputs.images[index]
    out = []
    for prompt in inputs.prompts:
        step1 = model.generate(
            [image], [prompt.step1(record.question, record.choices)], max_new_tokens=budget.analysis_tokens
        )[0]
        step2 = model.generate(
            [image],
            [prompt.step2(record.question, step1.text, record.choices)],
            max_new_tokens=budget.answer_tokens,
        )[0]
        answer = extract_short_answer(step2.text, record.choices)
        out.append(NaiveTrace(step1.text, step2.text, answer, step1.num_tokens + step2.num_tokens))
    return out


def ours_batch(
    model: VisionLanguageModel, inputs: Inputs, rows: slice, budget: GenerationBudget
) -> list[Answer]:
    """The batched path of ``sdrt traces``: encode the batch's images once, then two generate calls."""
    encoded = model.encode_images(inputs.images[rows])
    return answer_dual_query(model, inputs.records[rows], encoded, inputs.prompts, budget)


def measure(
    model: VisionLanguageModel,
    inputs: Inputs,
    budget: GenerationBudget,
    batch_size: int,
    *,
    with_baseline: bool = True,
    repeats: int = REPEATS,
) -> TraceRun:
    """Time every side on the same batches, alternating which goes first.

    The two batched sides run each batch ``repeats`` times, interleaved, and count their
    fastest run against each other (noise from the rest of the machine only ever adds time).
    The naive side, many times slower, runs once, so it is compared with the mean of ours'
    runs (``ours_mean``), not the fastest, which would favour ours. Answers are those of each
    side's first run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    run = TraceRun(examples=len(inputs.records), k=len(inputs.prompts))
    for number, rows in enumerate(batches(len(inputs.records), batch_size)):
        naive_first = number % 2 == 0
        if with_baseline and naive_first:
            _naive_batch(run, model, inputs, rows, budget)
        sides = {"ours": (model, run.ours, run.ours_answers)}
        if with_baseline:
            sides["plain"] = (PlainBatched(model), run.plain, run.plain_answers)
        laps = {name: Stopwatch() for name in sides}
        for repeat in range(repeats):
            for name in sides if (number + repeat) % 2 == 0 else reversed(list(sides)):
                side_model, _, answers = sides[name]
                with laps[name].timing(model.device):
                    out = ours_batch(side_model, inputs, rows, budget)
                if repeat == 0:
                    answers.extend(out)
        for name, (_, watch, _) in sides.items():
            watch.add(min(laps[name].laps))
        run.ours_mean.add(laps["ours"].seconds / repeats)
        if with_baseline and not naive_first:
            _naive_batch(run, model, inputs, rows, budget)
    return run


def _naive_batch(
    run: TraceRun, model: VisionLanguageModel, inputs: Inputs, rows: slice, budget: GenerationBudget
) -> None:
    with run.naive.timing(model.device):
        run.naive_traces.extend(naive_traces(model, inputs, i, budget) for i in range(rows.start, rows.stop))


def warm_up(model: VisionLanguageModel, inputs: Inputs, budget: GenerationBudget) -> None:
    """One small untimed pass of both paths, so neither side pays first-call costs (and the
    embedded model's on-disk feature cache holds every image for both)."""
    model.encode_images(inputs.images)
    small = GenerationBudget(analysis_tokens=2, answer_tokens=2)
    naive_traces(model, inputs.first(1), 0, small)
    ours_batch(model, inputs.first(1), slice(0, 1), small)


def figures(run: TraceRun) -> list[Figure]:
    """Against the naive path, and (when it ran) against the batched path before cache reuse."""
    n = run.examples
    naive, ours, ours_mean = run.naive.seconds / n, run.ours.seconds / n, run.ours_mean.seconds / n
    same_answer, same_analysis, total = run.agreement()
    speedup = naive / ours_mean
    out = [
        Figure(
            name="trace generation",
            baseline=naive,
            ours=ours_mean,
            unit="s/example",
            ratio=speedup,
            meaning="speed-up, baseline / ours",
            target=f">= {SPEEDUP_TARGET:g}x",
            met=speedup >= SPEEDUP_TARGET,
            details={
                "examples": n,
                "K": run.k,
                "answers agree": f"{same_answer}/{total}",
                "analyses agree": f"{same_analysis}/{total}",
                "tokens baseline/ours": f"{run.naive_tokens}/{run.ours_tokens}",
            },
        )
    ]
    if run.plain_answers:
        plain = run.plain.seconds / n
        same = sum(
            a.traces[i].answer == b.traces[i].answer
            for a, b in zip(run.ours_answers, run.plain_answers, strict=True)
            for i in range(len(a.traces))
        )
        out.append(
            Figure(
                name="trace generation against the earlier batched path",
                baseline=plain,
                ours=ours,
                unit="s/example",
                ratio=plain / ours,
                meaning="speed-up, batched before cache reuse / ours",
                target=f">= {PLAIN_SPEEDUP_TARGET:g}x",
                met=plain / ours >= PLAIN_SPEEDUP_TARGET,
                details={"answers agree": f"{same}/{total}"},
            )
        )
    return out
