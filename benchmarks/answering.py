"""Answering: one direct pass with the SDRT adapter attached vs the K-prompt dual-query ensemble.

This is what distillation buys at inference. The ensemble side is the batched dual-query path
(the same calls as trace generation), so when the trace-generation figure ran in the same
process its measurement is reused rather than repeated. The adapter is one that ``sdrt
distill`` trained on real traces when ``--adapter`` names its folder (what its answers cost is
then measured, lengths included); without one it is freshly built (the identity), and the
figure says that it shows the cost of a pass only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import Figure, Inputs, Stopwatch, batches
from benchmarks.trace_generation import TraceRun, measure
from sdrt.adapters import SDRTAdapter, load_adapter
from sdrt.adapters.lora import LoRAAdapter
from sdrt.distill.config import DistillConfig
from sdrt.models.base import VisionLanguageModel
from sdrt.reasoning.modes import Answer, GenerationBudget, answer_direct


def sdrt_adapter(model: VisionLanguageModel, trained: Path | None = None) -> SDRTAdapter | LoRAAdapter:
    """The adapter trained at ``trained``, else the one ``sdrt distill`` builds by default
    (LoReFT at the default layers + cross-modal skip), freshly initialised."""
    if trained is not None:
        return load_adapter(trained, model)
    return SDRTAdapter.for_model(DistillConfig().adapter, model)


@dataclass
class DirectRun:
    watch: Stopwatch
    answers: list[Answer]
    adapter: str  # which adapter answered: a trained folder, or the identity

    @property
    def tokens(self) -> int:
        return sum(a.generated_tokens for a in self.answers)


def measure_adapter(
    model: VisionLanguageModel,
    inputs: Inputs,
    budget: GenerationBudget,
    batch_size: int,
    trained: Path | None = None,
) -> DirectRun:
    """Direct answers with the adapter attached; images encoded per batch as in the ensemble."""
    adapter = sdrt_adapter(model, trained)
    watch, answers = Stopwatch(), []
    with adapter.attached(model):
        layout = adapter.layout
        warm_up = model.encode_images(inputs.images[:1])
        answer_direct(model, inputs.records[:1], warm_up, budget, layout=layout)
        for rows in batches(len(inputs.records), batch_size):
            with watch.timing(model.device):
                encoded = model.encode_images(inputs.images[rows])
                batch = answer_direct(model, inputs.records[rows], encoded, budget, layout=layout)
                answers.extend(batch)
    described = f"trained, {trained}" if trained else "identity (freshly built: the cost of a pass only)"
    return DirectRun(watch, answers, described)


def ensemble_run(
    model: VisionLanguageModel,
    inputs: Inputs,
    budget: GenerationBudget,
    batch_size: int,
    reuse: TraceRun | None,
) -> TraceRun:
    if reuse is not None and reuse.examples == len(inputs.records) and reuse.k == len(inputs.prompts):
        return reuse
    return measure(model, inputs, budget, batch_size, with_baseline=False)


def figure(ensemble: TraceRun, direct: DirectRun) -> Figure:
    n, k = ensemble.examples, ensemble.k
    ensemble_tokens = ensemble.ours_tokens / n
    direct_tokens = direct.tokens / n
    token_ratio = ensemble_tokens / max(direct_tokens, 1e-9)
    target = 2 * k
    return Figure(
        name="answering",
        baseline=ensemble_tokens,
        ours=direct_tokens,
        unit="generated tokens/answer",
        ratio=token_ratio,
        meaning="fewer generated tokens, ensemble / adapter",
        target=f">= 2K = {target}x",
        met=token_ratio >= target,
        details={
            "seconds/answer ensemble": ensemble.ours_mean.seconds / n,
            "seconds/answer adapter": direct.watch.seconds / n,
            "time ratio": ensemble.ours_mean.seconds / max(direct.watch.seconds, 1e-9),
            "K": k,
            "adapter": direct.adapter,
        },
    )
