"""Typed adapter settings, checked where they enter (YAML, JSON, keyword arguments).

``AdapterConfig`` is what a user writes (whole, inside ``DistillConfig.adapter``, as PEFT
takes a ``LoraConfig``) and what ``adapter_config.json`` stores. What a user may leave to the
model (the layers, the skip's source layer, one gate head per prompt) is filled in by
``resolved`` once the model is known; a saved config is always resolved. Checks that need
the base model (layer range, hidden size) live in ``check_against_model`` and gather every
problem into one ``AdapterError``.
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
    source_layer: int | None = Field(default=None, ge=0)  # None: half way to the lowest layer
    rank: int = Field(default=4, ge=1)


class GateConfig(BaseModel):
    """Learned gate mixing ``num_heads`` intervention heads per layer (one per prompt)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    num_heads: int | None = Field(default=None, ge=2)  # None: one per prompt of the traces


class BackPatchConfig(BaseModel):
    """Back-patching: a late layer's states of the question, mapped low-rank, added at an earlier layer.

    A one-pass model answering a two-hop question often resolves the first hop too late in the
    stack for the second to use it (Biran et al., 2024, "Hopping too late"). Here the frozen
    layers ``target_layer+1 .. source_layer`` run once more on the target layer's output, and
    ``U D rms(h_source)`` (D: d -> rank, U: rank -> d, zero at first) is added at the target
    layer's ``positions``: the pass goes on from there with the later reading in hand. Prompt
    positions only, so decode steps are one ordinary step each; the prefill pays the extra layers.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    target_layer: int | None = Field(default=None, ge=0)  # None: the lowest intervened layer
    source_layer: int | None = Field(default=None, ge=1)  # None: two thirds of the way up from it
    rank: int = Field(default=8, ge=1)
    positions: list[str] = Field(default_factory=lambda: ["first_prompt:32", "last_prompt:4"])

    @field_validator("positions")
    @classmethod
    def _prompt_positions(cls, positions: list[str]) -> list[str]:
        parsed = parse_position_specs(positions)
        if any(spec.kind in ("answer", "all_text") for spec in parsed):
            raise ValueError("back-patch positions must be prompt positions (first_prompt:N, last_prompt:N)")
        return [str(spec) for spec in parsed]

    @model_validator(mode="after")
    def _source_above_target(self) -> BackPatchConfig:
        target, source = self.target_layer, self.source_layer
        if target is not None and source is not None and source <= target:
            raise ValueError(
                f"back_patch.source_layer {self.source_layer} must be above target_layer {self.target_layer}"
            )
        return self


class GridMixConfig(BaseModel):
    """Grid mixing: image tokens read their neighbours on the 2-D token grid (``adapters.grid``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    layer: int | None = Field(default=None, ge=0)  # None: the lowest intervened layer
    rank: int = Field(default=16, ge=1)
    # (rows, columns) of offsets each cell reads, centred on it; odd so that it is centred.
    # The default spans a 7x7 grid's columns from any cell and three rows either way.
    kernel: tuple[int, int] = (7, 13)

    @field_validator("kernel")
    @classmethod
    def _odd_kernel(cls, kernel: tuple[int, int]) -> tuple[int, int]:
        if any(size < 1 or size % 2 == 0 for size in kernel):
            raise ValueError(f"grid_mix.kernel {list(kernel)} must be two odd sizes >= 1 (centred on a cell)")
        return kernel


class AdapterConfig(BaseModel):
    """Everything needed to rebuild an adapter and to pin it to its base model."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] | None = Field(default=None, min_length=1)  # None: four over the upper half
    rank: int = Field(default=4, ge=1)
    positions: list[str] = Field(default_factory=lambda: ["last_prompt:4", "answer"])
    skip: SkipConfig = Field(default_factory=SkipConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Pause slots: the student's prompt opens its answer with this many marks, and the adapter
    # adds a learned state to each at its lowest layer: extra positions to compute on in the one
    # pass (Goyal et al., 2024, "Think before you speak"). 0: none.
    pause_tokens: int = Field(default=0, ge=0, le=64)
    back_patch: BackPatchConfig = Field(default_factory=BackPatchConfig)
    # The student's prompt also states the question in a system turn before the image, so the
    # image positions are computed with the question in view (``StudentLayout``).
    question_first: bool = False
    grid_mix: GridMixConfig = Field(default_factory=GridMixConfig)
    base_model: str = ""
    base_model_config_hash: str = ""
    prompt_library_hash: str = ""
    sdrt_version: str = sdrt.__version__

    @field_validator("layers")
    @classmethod
    def _layers_distinct(cls, layers: list[int] | None) -> list[int] | None:
        if layers is None:
            return None
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
        source = self.skip.source_layer
        if self.skip.enabled and self.layers and source is not None and source >= min(self.layers):
            raise ValueError(
                f"skip.source_layer {self.skip.source_layer} must be below every intervened layer "
                f"(lowest is {min(self.layers)})"
            )
        return self

    @property
    def is_resolved(self) -> bool:
        """Whether every choice left to the model has been made (see ``resolved``)."""
        return (
            self.layers is not None
            and (not self.skip.enabled or self.skip.source_layer is not None)
            and (not self.gate.enabled or self.gate.num_heads is not None)
            and (
                not self.back_patch.enabled
                or (self.back_patch.target_layer is not None and self.back_patch.source_layer is not None)
            )
            and (not self.grid_mix.enabled or self.grid_mix.layer is not None)
        )

    @property
    def lowest_edited_layer(self) -> int:
        """The lowest layer whose output the adapter changes: the frozen model runs alone below it."""
        if self.layers is None:
            raise AdapterError("the adapter's layers are still open: resolve the config first")
        return min(
            [
                *self.layers,
                *([self.back_patch.target_layer] if self.back_patch.enabled else []),
                *([self.grid_mix.layer] if self.grid_mix.enabled else []),
            ]
        )

    def resolved(self, num_layers: int, num_prompts: int | None = None) -> AdapterConfig:
        """This config with the model's choices made: layers, the skip's source, gate heads."""
        layers = self.layers or default_layers(num_layers)
        values = self.model_dump()
        values["layers"] = layers
        if values["skip"]["source_layer"] is None:
            values["skip"]["source_layer"] = min(layers) // 2
        if self.gate.enabled and self.gate.num_heads is None:
            if num_prompts is None:
                raise AdapterError("a gated adapter needs its number of heads (one per prompt)")
            values["gate"]["num_heads"] = max(2, num_prompts)
        if self.back_patch.enabled:
            values["back_patch"] = resolved_back_patch(self.back_patch, min(layers), num_layers)
        if self.grid_mix.enabled and self.grid_mix.layer is None:
            values["grid_mix"]["layer"] = min(layers)
        return AdapterConfig.model_validate(values)


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


def resolved_back_patch(config: BackPatchConfig, lowest: int, num_layers: int) -> dict:
    """The back-patch's layers filled in: at the lowest intervened layer, from two thirds of the way up."""
    values = config.model_dump()
    target = lowest if config.target_layer is None else config.target_layer
    values["target_layer"] = target
    if config.source_layer is None:
        above = max(1, round((num_layers - 1 - target) * 2 / 3))
        values["source_layer"] = min(num_layers - 1, target + above)
    return values


def check_against_model(config: AdapterConfig, num_layers: int, hidden_size: int) -> None:
    """Raise one ``AdapterError`` listing every way ``config`` does not fit the model."""
    problems = [
        f"layer {layer} out of range (model has {num_layers} decoder layers)"
        for layer in config.layers
        if layer >= num_layers
    ]
    if config.rank > hidden_size:
        problems.append(f"rank {config.rank} exceeds hidden size {hidden_size}")
    parts = [
        ("skip", "source_layer", config.skip),
        ("back_patch", "source_layer", config.back_patch),
        ("grid_mix", "layer", config.grid_mix),
    ]
    for name, layer_field, part in parts:
        if part.enabled:
            problems.extend(_part_problems(name, layer_field, part, num_layers, hidden_size))
    if problems:
        raise AdapterError("adapter does not fit the model: " + "; ".join(problems))


def _part_problems(
    name: str,
    layer_field: str,
    part: SkipConfig | BackPatchConfig | GridMixConfig,
    num_layers: int,
    hidden_size: int,
) -> list[str]:
    """What does not fit in one optional part: the layer it reads or edits, and its rank."""
    problems = []
    layer = getattr(part, layer_field)
    if layer >= num_layers:
        problems.append(f"{name}.{layer_field} {layer} out of range (model has {num_layers})")
    if part.rank > hidden_size:
        problems.append(f"{name}.rank {part.rank} exceeds hidden size {hidden_size}")
    return problems
