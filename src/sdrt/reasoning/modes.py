"""Answering modes: direct, dual-query with one prompt, and the ensemble over K prompts.

Cost is what separates the modes, so every answer carries it: generated tokens and model
calls (prompt prefills) spent on it. Per batch, each image is encoded once and reused by the
K prompts and both steps; the K prompts of all examples go through one batched ``generate``
per step, so a batch of B examples costs two ``generate`` calls, not 2·K·B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sdrt.data.records import VQARecord
from sdrt.models.base import EncodedImage, Generation, Prompt, VisionLanguageModel
from sdrt.prompts.library import DualQueryPrompt, StudentLayout, direct_prompt, laid_out
from sdrt.reasoning.ensemble import Candidate, EnsembleResult, get_strategy
from sdrt.reasoning.extract import extract_short_answer


@dataclass(frozen=True)
class GenerationBudget:
    analysis_tokens: int = 48
    answer_tokens: int = 10
    open_tokens: int = 96  # open-ended answers (a description), not a short answer

    def reply_tokens(self, open_ended: bool) -> int:
        """The budget of a one-call reply: a description's or a short answer's."""
        return self.open_tokens if open_ended else self.answer_tokens


def batch_size_for(
    model: VisionLanguageModel,
    record: VQARecord,
    prompts: Sequence[DualQueryPrompt],
    budget: GenerationBudget,
    *,
    open_ended: bool = False,
    layout: StudentLayout = StudentLayout(),
) -> int:
    """Examples per batch when none is given: what free GPU memory holds (8 on a CPU).

    A row is sized by ``record``'s longest conversation: step 2 with a full-length analysis
    and answer; an example has one row per prompt. Without prompts the row is the direct
    question as ``answer_direct`` asks it (``open_ended``, ``layout``) and its reply.
    """
    from sdrt.models.memory import choose_batch_size

    image = model.encode_images([record.load_image()])[0]
    if prompts:
        filler = " ".join(["word"] * budget.analysis_tokens)
        longest = max(
            model.prompt_tokens(image, p.step2(record.question, filler, record.choices)) for p in prompts
        )
        return choose_batch_size(model, longest + budget.answer_tokens, len(prompts))
    asked = one_pass_prompt(model, record, layout, open_ended)
    return choose_batch_size(model, model.prompt_tokens(image, asked) + budget.reply_tokens(open_ended), 1)


def length_batches(records: Sequence[VQARecord], batch_size: int) -> list[list[int]]:
    """Indices of ``records`` in batches of similar length, longest first.

    A batch is left-padded to its longest prompt, so batches of like lengths pad little. The
    image and the prompt templates are the same for every record; what varies is the
    question and its choices, so their text length is the key. Longest first: a batch that
    does not fit in memory fails at once, not after hours; ``longest_record`` is the one to
    size batches by. Ties keep the records' order, so the batches are deterministic.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = _longest_first(records)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def longest_record(records: Sequence[VQARecord]) -> VQARecord:
    """The record whose question and choices are longest (the first of equals)."""
    return records[_longest_first(records)[0]]


def _longest_first(records: Sequence[VQARecord]) -> list[int]:
    """Indices by question + choices length, longest first, ties in the records' order."""
    lengths = [len(r.question) + sum(len(choice) for choice in r.choices or ()) for r in records]
    return sorted(range(len(records)), key=lambda i: (-lengths[i], i))


@dataclass
class PromptTrace:
    """What one dual-query prompt produced for one example."""

    prompt_id: str
    analysis: str
    raw_answer: str
    answer: str
    answer_logprob: float
    answer_mean_logprob: float
    analysis_tokens: int
    answer_tokens: int


@dataclass
class Answer:
    record_id: str
    answer: str
    raw_answer: str
    traces: list[PromptTrace] = field(default_factory=list)
    ensemble: EnsembleResult | None = None
    generated_tokens: int = 0
    model_calls: int = 0


def answer_direct(
    model: VisionLanguageModel,
    records: Sequence[VQARecord],
    images: Sequence[EncodedImage],
    budget: GenerationBudget = GenerationBudget(),
    open_ended: bool = False,
    layout: StudentLayout = StudentLayout(),
) -> list[Answer]:
    """One call per example with the standard short-answer instruction (no reasoning).

    ``open_ended`` asks the question as it is (no instruction) and keeps the whole reply, for
    benchmarks whose answer is a text rather than a word (``prompt_style="open"``).
    ``layout``: the attached adapter's student layout (its pause slots, the question before the image).
    """
    prompts = [one_pass_prompt(model, r, layout, open_ended) for r in records]
    outputs = model.generate(images, prompts, max_new_tokens=budget.reply_tokens(open_ended))
    return [
        Answer(
            record_id=r.id,
            answer=out.text.strip() if open_ended else extract_short_answer(out.text, r.choices),
            raw_answer=out.text,
            generated_tokens=out.num_tokens,
            model_calls=1,
        )
        for r, out in zip(records, outputs, strict=True)
    ]


def one_pass_prompt(
    model: VisionLanguageModel,
    record: VQARecord,
    layout: StudentLayout = StudentLayout(),
    open_ended: bool = False,
) -> Prompt:
    """The one-call question: as asked (open-ended) or with the short-answer instruction, in a
    student ``layout`` and with ``model``'s own system text. Direct answers, the adapter's
    answers and distillation's student all ask through it, so they ask alike."""
    if open_ended:
        return laid_out(record.question, record.question, layout, model.system_prompt)
    return direct_prompt(record.question, record.choices, layout, model.system_prompt)


def answer_dual_query(
    model: VisionLanguageModel,
    records: Sequence[VQARecord],
    images: Sequence[EncodedImage],
    prompts: Sequence[DualQueryPrompt],
    budget: GenerationBudget = GenerationBudget(),
    strategy: str = "majority",
) -> list[Answer]:
    """Both steps of every prompt for every example; K > 1 prompts are ensembled."""
    if not prompts:
        raise ValueError("dual-query answering needs at least one prompt")
    vote = get_strategy(strategy)
    rows = [(b, p) for b in range(len(records)) for p in prompts]  # example-major, prompt order kept
    row_images = [images[b] for b, _ in rows]

    step1 = [p.step1(records[b].question, records[b].choices) for b, p in rows]

    def step2(analyses: list[Generation]) -> list:
        return [
            p.step2(records[b].question, a.text, records[b].choices)
            for (b, p), a in zip(rows, analyses, strict=True)
        ]

    analyses, answers = model.generate_two_step(
        row_images, step1, step2, first_tokens=budget.analysis_tokens, second_tokens=budget.answer_tokens
    )

    results = []
    k = len(prompts)
    for b, record in enumerate(records):
        traces = [_trace(p, analyses[b * k + i], answers[b * k + i], record) for i, p in enumerate(prompts)]
        results.append(_combine(record, traces, vote))
    return results


def _trace(
    prompt: DualQueryPrompt, analysis: Generation, answer: Generation, record: VQARecord
) -> PromptTrace:
    return PromptTrace(
        prompt_id=prompt.id,
        analysis=analysis.text,
        raw_answer=answer.text,
        answer=extract_short_answer(answer.text, record.choices),
        answer_logprob=answer.logprob,
        answer_mean_logprob=answer.logprob / max(answer.num_tokens, 1),
        analysis_tokens=analysis.num_tokens,
        answer_tokens=answer.num_tokens,
    )


def _combine(record: VQARecord, traces: list[PromptTrace], vote) -> Answer:
    candidates = [
        Candidate(
            prompt_id=t.prompt_id,
            answer=t.answer,
            logprob=t.answer_logprob,
            mean_logprob=t.answer_mean_logprob,
        )
        for t in traces
    ]
    ensemble = vote(candidates)
    winner = next((t for t in traces if t.answer == ensemble.answer), traces[0])
    return Answer(
        record_id=record.id,
        answer=ensemble.answer,
        raw_answer=winner.raw_answer,
        traces=traces,
        ensemble=ensemble,
        generated_tokens=sum(t.analysis_tokens + t.answer_tokens for t in traces),
        model_calls=2 * len(traces),
    )


def parse_mode(mode: str) -> tuple[str, str | None]:
    """``direct`` | ``dual:<prompt-id>`` | ``ensemble`` | ``adapter`` -> (kind, prompt id)."""
    kind, _, prompt_id = mode.partition(":")
    if kind in {"direct", "ensemble", "adapter"} and not prompt_id:
        return kind, None
    if kind == "dual" and prompt_id:
        return kind, prompt_id
    raise ValueError(f"unknown mode {mode!r}; use direct, dual:<prompt-id>, ensemble or adapter")


def mode_prompts(
    mode: str, ensemble_prompts: Sequence[DualQueryPrompt], library_get
) -> list[DualQueryPrompt]:
    """The dual-query prompts a mode runs: none (direct, adapter), one (dual:<id>), or the ensemble's."""
    kind, prompt_id = parse_mode(mode)
    if kind in {"direct", "adapter"}:
        return []
    return [library_get(prompt_id)] if kind == "dual" else list(ensemble_prompts)


def answer_with_mode(
    model: VisionLanguageModel,
    records: Sequence[VQARecord],
    images: Sequence[EncodedImage],
    mode: str,
    ensemble_prompts: Sequence[DualQueryPrompt],
    library_get,
    budget: GenerationBudget = GenerationBudget(),
    strategy: str = "majority",
    open_ended: bool = False,
    layout: StudentLayout = StudentLayout(),
) -> list[Answer]:
    """Dispatch on a mode string. ``adapter`` answers directly: the adapter must be attached,
    and ``layout`` is its student layout.

    Open-ended questions (descriptions) are answered directly only: dual-query prompts end in
    a short-answer instruction.
    """
    prompts = mode_prompts(mode, ensemble_prompts, library_get)
    if not prompts:
        return answer_direct(model, records, images, budget, open_ended, layout)
    if open_ended:
        raise ValueError(
            f"mode {mode!r} answers in a word or phrase; an open-ended benchmark takes direct or adapter"
        )
    return answer_dual_query(model, records, images, prompts, budget, strategy)
