"""The typed ``sdrt distill`` config (YAML or flags), validated before any model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdrt.config import LoadOptions, StrictModel


class LossWeights(StrictModel):
    """Weight of each loss term; a term with weight 0 is not computed."""

    hidden: float = Field(default=1.0, ge=0)
    ce: float = Field(default=1.0, ge=0)
    kl: float = Field(default=0.0, ge=0)
    hidden_kind: Literal["mse", "cosine"] = "cosine"

    @model_validator(mode="after")
    def _some_term(self) -> LossWeights:
        if self.hidden == self.ce == self.kl == 0:
            raise ValueError("at least one loss weight must be positive")
        return self


DistillMethod = Literal["sdrt", "lora-sft"]


class DistillConfig(LoadOptions):
    model: str = "embedded"
    # sdrt: intervention adapters matched to the reasoning teachers (hidden states + CE + KL);
    # lora-sft: the control, PEFT LoRA on every linear layer fine-tuned on the same pseudo-labels
    # with cross-entropy alone (the loss weights below other than ce are not used).
    method: DistillMethod = "sdrt"
    traces: list[Path] = Field(default_factory=lambda: [Path("runs/traces")], min_length=1)
    out: Path = Path("runs/adapter")

    # the adapter
    layers: list[int] | None = None  # None: four layers spread over the upper half
    rank: int = Field(default=4, ge=1)
    positions: list[str] = Field(default_factory=lambda: ["last_prompt:4", "answer"])
    skip: bool = True
    skip_source_layer: int | None = Field(default=None, ge=0)  # None: half way to the lowest layer
    skip_rank: int = Field(default=4, ge=1)
    weighting: Literal["ensemble", "uniform"] = "ensemble"
    gate: bool = False
    lora_rank: int = Field(default=8, ge=1)  # method lora-sft
    lora_alpha: int = Field(default=16, ge=1)

    # the objective
    loss: LossWeights = LossWeights()
    top_k: int = Field(default=32, ge=1)  # teacher log-probs kept per answer token for the KL term
    min_agreement: float = Field(default=0.0, ge=0, le=1)
    # ensemble: the traces' pseudo-labels; direct: the model's own direct answers (the
    # self-training control: the same adapter and data, no reasoning; cross-entropy only)
    labels: Literal["ensemble", "direct"] = "ensemble"

    # optimisation
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    steps: int = Field(default=100, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_steps: int = Field(default=10, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(default=20, ge=1)
    cache_teacher: bool = False
    teacher_cache_dir: Path | None = (
        None  # default <out>/teacher-cache; runs on the same traces may share one
    )

    @model_validator(mode="after")
    def _controls_are_cross_entropy(self) -> DistillConfig:
        if self.method == "lora-sft" and self.loss.ce == 0:
            raise ValueError("method lora-sft trains with cross-entropy alone: loss.ce must be positive")
        if self.labels == "direct" and (self.loss.hidden > 0 or self.loss.kl > 0) and self.method == "sdrt":
            raise ValueError(
                "labels=direct trains on the model's own direct answers: the reasoning teachers do not "
                "apply, so set loss.hidden and loss.kl to 0 (cross-entropy only)"
            )
        return self

    @field_validator("traces", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str | Path) else value


def default_layers(num_layers: int, count: int = 4) -> list[int]:
    """``count`` layers spread evenly over the upper half of the stack.

    Upper layers carry what the answer needs, and the backward pass stops at the lowest
    intervened layer (everything below is frozen and needs no gradient), so the step costs
    about half a backward pass, where a LoRA on every layer pays for a whole one.
    """
    lowest = max(1, num_layers // 2)
    if num_layers - lowest <= count:
        return list(range(lowest, num_layers))
    step = (num_layers - 1 - lowest) / (count - 1)
    return sorted({lowest + round(i * step) for i in range(count)})
