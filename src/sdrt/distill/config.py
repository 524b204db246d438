"""The typed ``sdrt distill`` config (YAML or flags), validated before any model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdrt.adapters.config import AdapterConfig, SkipConfig
from sdrt.adapters.lora import LoRAAdapterConfig
from sdrt.config import LoadOptions, StrictModel


class LossWeights(StrictModel):
    """Weight of each loss term; a term with weight 0 is not computed."""

    hidden: float = Field(default=1.0, ge=0)
    ce: float = Field(default=1.0, ge=0)
    kl: float = Field(default=0.0, ge=0)
    gate: float = Field(default=1.0, ge=0)  # KL of the gate's mix to the ensemble weights (gate on)
    hidden_kind: Literal["mse", "cosine"] = "cosine"

    @model_validator(mode="after")
    def _some_term(self) -> LossWeights:
        if self.hidden == self.ce == self.kl == 0:
            raise ValueError("at least one loss weight must be positive")
        return self


DistillMethod = Literal["sdrt", "lora-sft"]
# label sources that are not the reasoning's: the teachers were never forced on them
UNREASONED_LABELS = {
    "direct": "the model's own direct answers",
    "reference": "the records' reference answers",
}


class DistillConfig(LoadOptions):
    model: str = "embedded"
    # sdrt: intervention adapters matched to the reasoning teachers (hidden states + CE + KL);
    # lora-sft: the control, PEFT LoRA on every linear layer fine-tuned on the same pseudo-labels
    # with cross-entropy alone (the loss weights below other than ce are not used).
    method: DistillMethod = "sdrt"
    traces: list[Path] = Field(default_factory=lambda: [Path("runs/traces")], min_length=1)
    # trace folders of questions where no gain is sought (other tasks, easier questions): their
    # examples are trained on the model's own greedy direct answers, not the ensemble's, so that
    # distilling the reasoning elsewhere leaves what the model already answers as it was (a
    # replay of the model's own outputs, as in continual learning; no labels read)
    retain: list[Path] = Field(default_factory=list)
    # the share of each batch drawn from the retained examples (None: in proportion to their
    # number). A few retained questions among thousands of distilled ones are otherwise seen too
    # rarely to hold their answers in place.
    retain_share: float | None = Field(default=None, gt=0, lt=1)
    out: Path = Path("runs/adapter")

    # the adapter, whole (layers None: four over the upper half; the skip is on unless
    # adapter.skip.enabled says otherwise) and, for method lora-sft, the LoRA control's settings
    adapter: AdapterConfig = Field(default_factory=lambda: AdapterConfig(skip=SkipConfig(enabled=True)))
    lora: LoRAAdapterConfig = Field(default_factory=LoRAAdapterConfig)
    weighting: Literal["ensemble", "uniform"] = "ensemble"  # of the K teachers in the loss

    # the objective
    loss: LossWeights = LossWeights()
    top_k: int = Field(default=32, ge=1)  # teacher log-probs kept per answer token for the KL term
    min_agreement: float = Field(default=0.0, ge=0, le=1)
    # ensemble: the traces' pseudo-labels; reliability: the traces voted again, each prompt
    # weighted by its accuracy as estimated from its folder's answers (no labels read);
    # direct: the model's own direct answers (the self-training control: the same adapter and
    # data, no reasoning; cross-entropy only); reference: the records' reference answers, a
    # diagnostic, not SDRT (it reads labels): how much of the gain one pass can hold at all when
    # every label is right (cross-entropy only)
    labels: Literal["ensemble", "reliability", "direct", "reference"] = "ensemble"

    # stepwise internalisation (``sdrt.distill.curriculum``): the distilled examples' labels
    # start with the analysis behind them, cut from the front a little more each step until,
    # after this share of the steps, the label stands alone. 0: off (the label alone throughout)
    internalize: float = Field(default=0.0, ge=0, lt=1)

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
    # an adapter folder <out>/snapshots/step-NNNNNNN every this many steps, kept (unlike
    # checkpoints), so that one run gives a learning curve: each snapshot loads with --adapter
    snapshot_every: int | None = Field(default=None, ge=1)
    # the student's states under the lowest intervened layer, kept per example after its first
    # step (exact: the layers there are frozen), in at most this many GiB of host memory
    cache_prefix: bool = True
    prefix_cache_gb: float = Field(default=4.0, ge=0)
    cache_teacher: bool = False
    teacher_cache_dir: Path | None = (
        None  # default <out>/teacher-cache; runs on the same traces may share one
    )

    @property
    def reads_teachers(self) -> bool:
        """Whether the loss needs the reasoning teachers' targets.

        The LoRA-SFT control and a cross-entropy-only run (the self-training control, the CE-only
        ablation) do not: they skip the teacher forwards altogether.
        """
        gate = self.adapter.gate.enabled and self.loss.gate > 0
        return self.method == "sdrt" and (self.loss.hidden > 0 or self.loss.kl > 0 or gate)

    @model_validator(mode="after")
    def _controls_are_cross_entropy(self) -> DistillConfig:
        if self.method == "lora-sft" and self.loss.ce == 0:
            raise ValueError("method lora-sft trains with cross-entropy alone: loss.ce must be positive")
        teachers = self.loss.hidden > 0 or self.loss.kl > 0
        if self.labels in UNREASONED_LABELS and teachers and self.method == "sdrt":
            raise ValueError(
                f"labels={self.labels} trains on {UNREASONED_LABELS[self.labels]}: the reasoning teachers "
                "do not apply, so set loss.hidden and loss.kl to 0 (cross-entropy only)"
            )
        return self

    @model_validator(mode="after")
    def _internalize_is_cross_entropy(self) -> DistillConfig:
        if not self.internalize:
            return self
        if self.reads_teachers:
            raise ValueError(
                "internalize rewrites the labels the student is trained to write: it trains with "
                "cross-entropy alone, so set loss.hidden and loss.kl to 0 (and keep the gate off)"
            )
        if self.labels == "direct":
            raise ValueError("internalize needs the reasoning behind each label: labels=direct has none")
        return self

    @model_validator(mode="after")
    def _pause_slots_are_sdrt(self) -> DistillConfig:
        if self.method == "lora-sft" and self.adapter.pause_tokens:
            raise ValueError(
                "adapter.pause_tokens are the SDRT adapter's learned positions; method lora-sft "
                "has none: set it to 0 or train method sdrt"
            )
        if self.method == "lora-sft" and self.adapter.question_first:
            raise ValueError(
                "adapter.question_first lays out the SDRT adapter's prompts; method lora-sft "
                "reads lora.question_first"
            )
        return self

    @model_validator(mode="after")
    def _retain_share_has_retained_rows(self) -> DistillConfig:
        if self.retain_share is not None and not self.retain:
            raise ValueError("retain_share mixes retained examples into every batch: name them in retain")
        if self.retain_share is not None and self.batch_size < 2:
            raise ValueError("retain_share splits each batch in two: batch_size must be at least 2")
        return self

    @field_validator("adapter", mode="before")
    @classmethod
    def _skip_on_unless_said(cls, value: object) -> object:
        """SDRT's adapter has the cross-modal skip: a YAML ``adapter:`` section keeps it on."""
        if isinstance(value, dict):
            skip = value.get("skip") or {}
            if isinstance(skip, dict) and "enabled" not in skip:
                value = {**value, "skip": {**skip, "enabled": True}}
        return value

    @field_validator("traces", "retain", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str | Path) else value
