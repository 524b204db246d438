"""Typed configs for the jobs the CLI and the API run, validated at the edge.

Each job reads a config object; the CLI builds it from flags (or a YAML file) so that
wrong values fail here, with every problem listed at once, before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or flag combination is invalid; the message lists every problem."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSource(StrictModel):
    """Where examples come from: a built-in name ("easy-vqa", "scenes") or a file/folder."""

    source: str = "easy-vqa"
    split: str = "train"
    layout: str | None = None  # published layout of a Parquet folder (docvqa, chartqa, ...)
    limit: int | None = Field(default=None, gt=0)
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.source}:{self.split}"


DType = Literal["float32", "bfloat16", "float16"]
Attention = Literal["sdpa", "eager", "flash_attention_2"]


class LoadOptions(StrictModel):
    """How to place a model: every command that loads one takes these (``--dtype`` and so on).

    ``device_map="auto"`` lets accelerate spread a model larger than one GPU over the GPUs (and
    the CPU); ``device`` is then where inputs go (the first GPU). ``attn_implementation`` is
    transformers' own choice (``flash_attention_2`` needs the flash-attn package).
    """

    device: str = "cpu"
    dtype: DType = "float32"
    device_map: str | None = None
    attn_implementation: Attention | None = None

    @property
    def load_options(self) -> LoadOptions:
        """Just the placement, for a stage config that carries these fields among its own."""
        return LoadOptions.model_validate(self.model_dump(include=set(LoadOptions.model_fields)))


class TraceConfig(LoadOptions):
    model: str = "embedded"
    data: DataSource = DataSource()
    prompts: list[str] | None = None  # prompt ids; None = the first k suited to the data's task type
    prompts_yaml: Path | None = None  # extra or overriding prompts
    k: int = Field(default=3, gt=0)
    strategy: str = "majority"
    batch_size: int | None = Field(default=None, gt=0)  # None: from free GPU memory (8 on a CPU)
    shard_examples: int = Field(default=32, gt=0)
    analysis_tokens: int = Field(default=48, gt=0)
    answer_tokens: int = Field(default=10, gt=0)
    out: Path = Path("runs/traces")
    skip_bad: bool = False


def load_config(
    cls: type[ConfigT], path: str | Path | Sequence[str | Path] | None = None, **overrides: Any
) -> ConfigT:
    """Build ``cls`` from optional YAML files plus CLI overrides (``None`` overrides ignored).

    Several files merge in order, a later one overriding single fields of an earlier one (a
    base config, then one ablation's change).
    """
    values: dict[str, Any] = {}
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    for one in paths:
        try:
            loaded = yaml.safe_load(Path(one).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {one}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {one} must be a mapping, got {type(loaded).__name__}")
        _merge(values, loaded)
    _merge(values, {k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        where = f" in {', '.join(str(p) for p in paths)}" if paths else ""
        raise ConfigError(f"invalid {cls.__name__}{where}: {problems}") from exc


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Deep-merge: a flag that sets one field of a nested section keeps the file's other fields."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
