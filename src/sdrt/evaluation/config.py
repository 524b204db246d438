"""What ``sdrt eval`` scores, as one typed config: YAML (``--config``) or flags, validated here.

As for traces and distillation, the command line only fills this object; the core receives it
whole. A user's own files are entries of ``data`` (file, metric, layout, task type), in the
way an lmms-eval task YAML names its dataset and metric.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from sdrt.config import LoadOptions, StrictModel

PLAIN_MODES = ("direct", "ensemble", "adapter")


class OwnData(StrictModel):
    """One of the user's files scored as a benchmark (``Benchmark.from_file``)."""

    file: Path
    metric: str
    layout: str | None = None  # published layout of a Parquet folder; guessed from columns if None
    task_type: str = "scene"  # chooses the ensemble's prompts


class EvalConfig(LoadOptions):
    model: str = "embedded"
    benchmarks: list[str] = Field(default_factory=list)  # registered names; easy-vqa when no data
    data: list[OwnData] = Field(default_factory=list)
    modes: list[str] = Field(default_factory=lambda: ["direct"])  # direct | dual:<id> | ensemble | adapter
    adapter: Path | None = None  # the adapter folder that mode "adapter" attaches
    data_dir: Path = Path("data")
    limit: int | None = Field(default=None, gt=0)  # a seeded sample of this many examples
    seed: int = 0  # sampling and bootstrap seed
    split: str | None = None  # instead of each benchmark's own (e.g. validation)
    k: int = Field(default=3, gt=0)  # prompts in the ensemble
    prompts: list[str] | None = None  # the ensemble's prompt ids; None: the first k suited
    prompts_yaml: Path | None = None  # extra or overriding prompts
    batch_size: int | None = Field(default=None, gt=0)  # None: from free GPU memory (8 on a CPU)
    analysis_tokens: int | None = Field(default=None, gt=0)  # step-1 budget of reasoning modes
    out: Path = Path("runs/results.json")
    skip_bad: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        unknown = [m for m in self.modes if m not in PLAIN_MODES and not m.startswith("dual:")]
        if unknown:
            raise ValueError(f"unknown modes {unknown}; use direct, dual:<prompt id>, ensemble or adapter")
        if "adapter" in self.modes and self.adapter is None:
            raise ValueError("mode 'adapter' needs an adapter folder (--adapter)")
        return self

    @property
    def benchmark_names(self) -> list[str]:
        """The registered benchmarks to score: easy-vqa when neither they nor own data are named."""
        return self.benchmarks or ([] if self.data else ["easy-vqa"])
