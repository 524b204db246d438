"""The LoRA-SFT control: PEFT LoRA on the language model, fine-tuned on the same pseudo-labels.

An expert asks whether a gain comes from SDRT's reasoning targets and architecture, or only
from fine-tuning on the ensemble's answers. This adapter answers that: a rank-``r`` LoRA on
every linear layer of the decoder layers (never the vision tower or the projector), trained
with cross-entropy on the pseudo-labels from the direct prompt, and attached and saved like
an SDRT adapter so that ``sdrt eval --mode adapter`` scores either.

PEFT injects the LoRA layers into the frozen model in place (``inject_adapter_in_model``);
detaching switches them off rather than unloading them, so attaching again is free.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

import sdrt
from sdrt.adapters.config import AdapterError
from sdrt.models.base import VisionLanguageModel
from sdrt.prompts.library import StudentLayout

METHOD = "lora-sft"


class LoRAAdapterConfig(BaseModel):
    """What rebuilds a LoRA control adapter and pins it to its base model."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    target_modules: list[str] = Field(default_factory=list)  # empty: every linear layer's name
    question_first: bool = False  # the student's prompt states the question before the image too
    base_model: str = ""
    base_model_config_hash: str = ""


def linear_names(module: nn.Module) -> list[str]:
    """Leaf names of the ``nn.Linear`` layers inside ``module`` (q_proj, up_proj, ...)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})


class LoRAAdapter:
    """LoRA layers living inside one model's decoder layers; see the module docstring."""

    def __init__(self, config: LoRAAdapterConfig, model: VisionLanguageModel) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        if config.base_model_config_hash and config.base_model_config_hash != model.config_hash:
            raise AdapterError(
                f"LoRA adapter was trained on {config.base_model or 'another model'} "
                f"(config hash {config.base_model_config_hash}), not on {model.name} ({model.config_hash})"
            )
        targets = config.target_modules or linear_names(model.decoder_layers)
        self.config = config.model_copy(
            update={
                "target_modules": targets,
                "base_model": config.base_model or model.name,
                "base_model_config_hash": model.config_hash,
            }
        )
        self.model = model
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=targets, lora_dropout=0.0)
        inject_adapter_in_model(lora, model.decoder_layers)
        model.decoder_layers.to(model.device)
        self._layers = [m for m in model.decoder_layers.modules() if _is_lora_layer(m)]
        for parameter in self.parameters():  # PEFT builds them in the base layer's dtype
            parameter.data = parameter.data.float()  # fp32 like SDRT adapters; PEFT casts inputs to them
        self._set_enabled(False)

    @classmethod
    def for_model(cls, model: VisionLanguageModel, rank: int = 8, alpha: int = 16) -> LoRAAdapter:
        return cls(LoRAAdapterConfig(rank=rank, alpha=alpha), model)

    # --- the adapter protocol (what the trainer and evaluation use) ------------------------

    def parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.model.decoder_layers.named_parameters() if "lora_" in name]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def layout(self) -> StudentLayout:
        """How its prompts are laid out; LoRA edits every position it has, so it opens no pause slots."""
        return StudentLayout(question_first=self.config.question_first)

    def state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.model.decoder_layers)
        return {k: v.detach().clone() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model.decoder_layers, state)
        if result.unexpected_keys:
            raise AdapterError(f"LoRA weights do not fit {self.model.name}: {result.unexpected_keys[:3]}")

    @contextmanager
    def attached(self, model: VisionLanguageModel) -> Iterator[LoRAAdapter]:
        """``with adapter.attached(model):`` the LoRA layers are on, then off again."""
        self._check(model)
        self._set_enabled(True)
        try:
            yield self
        finally:
            self._set_enabled(False)

    def attach(self, model: VisionLanguageModel) -> None:
        """Switch the LoRA layers on for good (``sdrt ask``)."""
        self._check(model)
        self._set_enabled(True)

    def _check(self, model: VisionLanguageModel) -> None:
        if model is not self.model:
            raise AdapterError(f"this LoRA adapter lives inside {self.model.name}; it cannot move to another")

    def _set_enabled(self, enabled: bool) -> None:
        for layer in self._layers:
            layer.enable_adapters(enabled)
        for p in self.parameters():  # enable_adapters(False) also freezes; training wants them live
            p.requires_grad_(True)


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


# --- files ---------------------------------------------------------------------------------


def save_lora_adapter(adapter: LoRAAdapter, out_dir: str | Path, config_name: str, weights_name: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"method": METHOD, **adapter.config.model_dump(mode="json"), "sdrt_version": sdrt.__version__}
    (out / config_name).write_text(json.dumps(config, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    tensors = {k: v.to("cpu").contiguous() for k, v in adapter.state_dict().items()}
    save_file(tensors, str(out / weights_name), metadata={"format": "pt", "method": METHOD})
    return out


def load_lora_adapter(raw_config: dict[str, Any], weights: Path, model: VisionLanguageModel) -> LoRAAdapter:
    known = {k: v for k, v in raw_config.items() if k in LoRAAdapterConfig.model_fields}
    adapter = LoRAAdapter(LoRAAdapterConfig.model_validate(known), model)
    if not weights.is_file():
        raise AdapterError(f"no {weights.name} in {weights.parent}")
    adapter.load_state_dict(load_file(str(weights)))
    return adapter
