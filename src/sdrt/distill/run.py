"""``sdrt distill`` with a progress bar and the parameter-efficiency report."""

from __future__ import annotations

from sdrt.distill.config import DistillConfig
from sdrt.distill.trainer import DistillResult, run_distillation
from sdrt.models import VisionLanguageModel, load_model
from sdrt.progress import console, progress_bar


def parameter_report(model, trainable: int) -> str:
    """Trainable parameters, their share of the model, and a rank-8 all-linear LoRA's count."""
    from sdrt.adapters.model import lora_parameter_count

    total = model.num_parameters()
    lora = lora_parameter_count(model, rank=8)
    return (
        f"trainable parameters: {trainable:,} ({100 * trainable / total:.4f}% of {total:,}); "
        f"a PEFT LoRA of rank 8 on all linear layers of the language model: {lora:,} "
        f"({lora / max(trainable, 1):.1f}x more)"
    )


def distill_with_progress(
    config: DistillConfig, model: VisionLanguageModel | None = None, *, restart: bool = False
) -> DistillResult:
    """``sdrt distill``: train, showing progress; ``model``, if given, is used instead of loading one."""
    model = model or load_model(config.model, config.load_options)
    with progress_bar(config.steps, "distill", unit="step") as advance:
        result = run_distillation(
            config,
            model,
            on_step=lambda e: advance(1, loss=e.loss, lr=e.lr, **e.terms),
            on_start=advance,
            on_teachers=lambda done, total: advance(0, teachers=f"{done}/{total} rows"),
            restart=restart,
        )
    console.print(parameter_report(model, result.trainable_parameters))
    return result
