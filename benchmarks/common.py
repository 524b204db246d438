"""What every figure shares: sizes, the model and its inputs, timers, and the printed lines."""

from __future__ import annotations

import math
import platform
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from sdrt.data import load_records
from sdrt.data.records import VQARecord
from sdrt.models.base import ModelError, VisionLanguageModel
from sdrt.prompts.library import DualQueryPrompt, PromptLibrary
from sdrt.reasoning.modes import GenerationBudget

DATA_SOURCE = "scenes:multi-hop"  # generated, exact answers, no files needed
TASK_TYPE = "scene"


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does; ``quick`` keeps a smoke run to seconds."""

    examples: int = 8
    k: int = 3
    batch_size: int = 8
    analysis_tokens: int = 48
    answer_tokens: int = 10
    distill_steps: int = 3
    warmup_steps: int = 1
    scaling_ks: tuple[int, ...] = (1, 2, 3, 5)
    scaling_examples: tuple[int, ...] = (2, 4, 8)
    scaling_analysis: tuple[int, ...] = (16, 32, 64)
    scaling_base_examples: int = 4
    # examples per generation batch, over the same scaling_batch_examples examples (a demo-sized
    # job): what a larger batch buys once its rows stop fitting the small-matmul regime
    scaling_batches: tuple[int, ...] = (8, 16, 48)
    scaling_batch_examples: int = 48

    @property
    def budget(self) -> GenerationBudget:
        return GenerationBudget(analysis_tokens=self.analysis_tokens, answer_tokens=self.answer_tokens)

    @staticmethod
    def choose(
        quick: bool,
        examples: int | None,
        k: int | None,
        batch_size: int | None,
        analysis_tokens: int | None = None,
    ) -> Sizes:
        base = Sizes.quick() if quick else Sizes()
        n = examples or base.examples
        return replace(
            base,
            examples=n,
            k=k or base.k,
            batch_size=batch_size or min(base.batch_size, n),
            analysis_tokens=analysis_tokens or base.analysis_tokens,
        )

    @staticmethod
    def quick() -> Sizes:
        return Sizes(
            examples=2,
            k=2,
            batch_size=2,
            analysis_tokens=8,
            answer_tokens=4,
            distill_steps=1,
            warmup_steps=1,
            scaling_ks=(1, 2),
            scaling_examples=(1, 2),
            scaling_analysis=(4, 8),
            scaling_base_examples=2,
            scaling_batches=(1, 3),
            scaling_batch_examples=3,
        )


@dataclass
class Inputs:
    """The same records, images and prompts for every side of every figure."""

    records: list[VQARecord]
    images: list[Image.Image]
    prompts: list[DualQueryPrompt]
    library: PromptLibrary

    def first(self, n: int, k: int | None = None) -> Inputs:
        prompts = self.prompts if k is None else self.library.select(task_type=TASK_TYPE, k=k)
        return Inputs(self.records[:n], self.images[:n], prompts, self.library)


def make_inputs(examples: int, k: int) -> Inputs:
    """Multi-hop scene questions (test split) and the first ``k`` library prompts suited to scenes."""
    records = load_records(DATA_SOURCE, split="test", limit=examples, seed=0)
    library = PromptLibrary.builtin()
    prompts = library.select(task_type=TASK_TYPE, k=k)
    if len(prompts) < k:
        raise ValueError(f"the library has only {len(prompts)} prompts for {TASK_TYPE!r}, asked for {k}")
    return Inputs(records, [r.load_image() for r in records], prompts, library)


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# --- the model -------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: VisionLanguageModel
    note: str  # what a reader must know about these weights (e.g. a random projector)


def load_bench_model(name: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """The named model; the embedded one falls back to a random projector until it is trained.

    A random projector changes what is generated, not what a forward costs, so timings hold.
    """
    from sdrt.models import load_model

    try:
        model = load_model(name, device=device, dtype=dtype)
    except ModelError as err:
        if name != "embedded" or "no trained projector" not in str(err):
            raise
        from sdrt.models.embedded import EmbeddedVLM

        model = EmbeddedVLM.load(device=device, untrained=True)
        return LoadedModel(model, "random (untrained) projector: timings hold, answers are not meaningful")
    if name == "embedded":
        return LoadedModel(model, "trained projector")
    if name.startswith("tiny:"):
        return LoadedModel(model, "random tiny weights (smoke run)")
    return LoadedModel(model, "")


def set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# --- timing ------------------------------------------------------------------------------------------


@dataclass
class Stopwatch:
    """Accumulates seconds over several timed blocks (so two sides can be interleaved)."""

    seconds: float = 0.0
    laps: list[float] = field(default_factory=list)

    @contextmanager
    def timing(self, device: torch.device | None = None) -> Iterator[None]:
        synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(device)
            self.add(time.perf_counter() - start)

    def add(self, lap: float) -> None:
        self.laps.append(lap)
        self.seconds += lap


def synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


# --- printed lines ------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One printed line: ``name: baseline B unit, ours O unit, ratio R (meaning)``."""

    name: str
    baseline: float
    ours: float
    unit: str
    ratio: float
    meaning: str
    target: str = ""
    met: bool | None = None
    details: dict[str, object] = field(default_factory=dict)
    by_design: bool = False  # true by construction (a count, not a timing): stated, not measured

    def line(self) -> str:
        text = (
            f"{self.name}: baseline {fmt(self.baseline)} {self.unit}, ours {fmt(self.ours)} {self.unit}, "
            f"ratio {self.ratio:.3g} ({self.meaning})"
        )
        if self.by_design:
            text += "; a property of the design, not a measurement"
        if self.target:
            verdict = "met" if self.met else "missed"
            text += f"; target {self.target}: {verdict}"
        extras = ", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}" for k, v in self.details.items())
        return f"{text}; {extras}" if extras else text


def fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


RATIO_LINE = re.compile(r"^(?P<name>[a-z -]+): baseline .*?, ratio (?P<ratio>[-+0-9.e]+|nan|inf)\b")


def parse_ratios(output: str) -> dict[str, float]:
    """Figure name -> ratio from printed output (what the smoke test and the doc writer read)."""
    found = {}
    for line in output.splitlines():
        match = RATIO_LINE.match(line.strip())
        if match:
            found[match["name"]] = float(match["ratio"])
    return found


@dataclass
class Machine:
    cpu: str
    cores: int
    torch_version: str
    threads: int
    gpu: str = ""

    def describe(self) -> str:
        text = f"{self.cpu}, {self.cores} cores, torch {self.torch_version}, {self.threads} torch thread(s)"
        return f"{text}, GPU {self.gpu}" if self.gpu else text


def machine(threads: int, gpu: str = "") -> Machine:
    return Machine(cpu_model(), _cores(), torch.__version__, threads, gpu)


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
