"""Typed adapter settings, checked where they enter (YAML, JSON, keyword arguments).

``AdapterConfig`` is what a user writes and what ``adapter_config.json`` stores. Checks that
need the base model (layer range, hidden size) live in ``check_against_model`` and gather
every problem into one ``AdapterError``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import sdrt
from sdrt.adapters.positions import parse_position_specs


class AdapterError(ValueError):
    """An adapter config, file or attachment is wrong; the message lists every problem found."""


class SkipConfig(BaseModel):
    """Cross-modal skip: pooled image states of ``source_layer`` feed later text positions."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    source_layer: int = Field(default=1, ge=0)
    rank: int = Field(default=4, ge=1)


class GateConfig(BaseModel):
    """Learned gate mixing ``num_heads`` intervention heads per layer (one per prompt)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    num_heads: int = Field(default=3, ge=2)


class AdapterConfig(BaseModel):
    """Everything needed to rebuild an adapter and to pin it to its base model."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] = Field(min_length=1)
    rank: int = Field(default=4, ge=1)
    positions: list[str] = Field(default_factory=lambda: ["last_prompt:4", "answer"])
    skip: SkipConfig = Field(default_factory=SkipConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    base_model: str = ""
    base_model_config_hash: str = ""
    prompt_library_hash: str = ""
    sdrt_version: str = sdrt.__version__

    @field_validator("layers")
    @classmethod
    def _layers_distinct(cls, layers: list[int]) -> list[int]:
        problems = [f"layer {layer} is negative" for layer in layers if layer < 0]
        if len(set(layers)) != len(layers):
            problems.append(f"layers repeat: {layers}")
        if problems:
            raise ValueError("; ".join(problems))
        return sorted(layers)

    @field_validator("positions")
    @classmethod
    def _positions_parse(cls, positions: list[str]) -> list[str]:
        return [str(spec) for spec in parse_position_specs(positions)]

    @model_validator(mode="after")
    def _skip_before_layers(self) -> AdapterConfig:
        if self.skip.enabled and self.skip.source_layer >= min(self.layers):
            raise ValueError(
                f"skip.source_layer {self.skip.source_layer} must be below every intervened layer "
                f"(lowest is {min(self.layers)})"
            )
        return self


def check_against_model(config: AdapterConfig, num_layers: int, hidden_size: int) -> None:
    """Raise one ``AdapterError`` listing every way ``config`` does not fit the model."""
    problems = [
        f"layer {layer} out of range (model has {num_layers} decoder layers)"
        for layer in config.layers
        if layer >= num_layers
    ]
    if config.rank > hidden_size:
        problems.append(f"rank {config.rank} exceeds hidden size {hidden_size}")
    if config.skip.enabled:
        if config.skip.source_layer >= num_layers:
            problems.append(
                f"skip.source_layer {config.skip.source_layer} out of range (model has {num_layers})"
            )
        if config.skip.rank > hidden_size:
            problems.append(f"skip.rank {config.skip.rank} exceeds hidden size {hidden_size}")
    if problems:
        raise AdapterError("adapter does not fit the model: " + "; ".join(problems))
