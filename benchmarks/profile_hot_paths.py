"""Where the time of the two hot paths goes: ``python -m benchmarks.profile_hot_paths --model embedded``.

Two views of the same run: a phase split (decoder-stack forwards grouped into prefill /
teacher-forced forwards and one-token decode steps, with the share of padded positions), taken
with hooks on the module that runs the decoder stack; and the top operators by self time from
``torch.profiler``. Paths: batched trace generation (one ``answer_dual_query`` batch) and
the distillation student step (``DistillTrainer.train_step`` with precomputed teacher targets).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import Inputs, Sizes, load_bench_model, make_inputs, set_threads
from benchmarks.distill_step import make_trainer, use_precomputed_targets
from benchmarks.trace_generation import ours_batch, warm_up
from sdrt.models.base import VisionLanguageModel


@dataclass
class PhaseStats:
    """Seconds in decoder-stack forwards, by kind, and how many of their positions were padding."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    positions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    padded: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def lines(self, total: float) -> list[str]:
        out = []
        for kind in sorted(k for k in self.seconds if k != "prefills"):
            share = 100 * self.seconds[kind] / total if total else 0.0
            pad = 100 * self.padded[kind] / max(self.positions[kind], 1)
            out.append(
                f"  {kind:<22} {self.seconds[kind]:7.2f} s ({share:4.1f}% of the path), "
                f"{self.calls[kind]} forwards, {self.positions[kind]} positions, {pad:.0f}% padding"
            )
        return out


def stack_owner(model: VisionLanguageModel) -> torch.nn.Module:
    """The module whose forward runs the whole decoder stack (the layer list is its child).

    Timing hooks go on it, not on the layers: a hook on a decoder layer would make the backend
    take its plain path (layer hooks expect whole forwards), and the profile would then show a
    path that ``sdrt traces`` does not run.
    """
    layers = model.decoder_layers
    for root in (value for value in vars(model).values() if isinstance(value, torch.nn.Module)):
        for module in root.modules():
            if any(child is layers for child in module.children()):
                return module
    raise ValueError(f"{model.name}: no module holds the decoder layers")


@contextmanager
def phase_hooks(model: VisionLanguageModel) -> Iterator[PhaseStats]:
    """Time each full pass through the decoder stack, keyed by its shape (prefill vs decode step)."""
    stats = PhaseStats()
    owner = stack_owner(model)
    started: list[float] = []

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        started.append(time.perf_counter())

    def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if not started:
            return
        elapsed = time.perf_counter() - started.pop()
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        batch, length = hidden.shape[0], hidden.shape[1]
        if length == 1:
            kind = "decode step (1 token)"
        elif torch.is_grad_enabled():
            kind = "scored forward (grad)"
        else:
            kind = f"prefill #{stats.calls['prefills'] + 1}"
            stats.calls["prefills"] += 1
        stats.seconds[kind] += elapsed
        stats.calls[kind] += 1
        stats.positions[kind] += batch * length
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:  # the new positions are the mask's last columns
            stats.padded[kind] += int((mask[:, -length:] == 0).sum())

    handles = [
        owner.register_forward_pre_hook(before, with_kwargs=True),
        owner.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def profile_path(name: str, model: VisionLanguageModel, run: Callable[[], object], top: int) -> None:
    with phase_hooks(model) as stats:
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    print(f"{name}: {total:.2f} s in all")
    for line in stats.lines(total):
        print(line)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def trace_path(model: VisionLanguageModel, inputs: Inputs, sizes: Sizes) -> Callable[[], object]:
    return lambda: ours_batch(model, inputs, slice(0, len(inputs.records)), sizes.budget)


def distill_path(model: VisionLanguageModel, inputs: Inputs, sizes: Sizes, out: Path) -> Callable[[], object]:
    trainer = make_trainer(model, inputs, sizes, out)
    use_precomputed_targets(trainer, model)
    trainer.adapter.attach(model)
    trainer.train_step()  # warm-up
    return trainer.train_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    sizes = Sizes.choose(args.quick, args.examples, args.k, args.examples)
    loaded = load_bench_model(args.model)
    inputs = make_inputs(sizes.examples, sizes.k)
    print(f"# {args.model}: {loaded.note}; {sizes.examples} examples, K={sizes.k}")
    warm_up(loaded.model, inputs, sizes.budget)
    model = loaded.model
    profile_path("trace generation (one batch)", model, trace_path(model, inputs, sizes), args.top)
    with tempfile.TemporaryDirectory() as tmp:
        step = distill_path(model, inputs, sizes, Path(tmp))
        profile_path("distillation student step", model, step, args.top)


if __name__ == "__main__":
    main()
