"""Distillation step: the SDRT adapter's student step vs a rank-8 PEFT LoRA on the language model.

Ours is ``DistillTrainer.train_step`` itself (adapter with cross-modal skip on the default
layers, loss = hidden alignment + CE), with the teacher targets computed before the clock
starts, so the timed part is the student step: image features, forward, backward, optimiser
step. The warm-up steps fill the frozen-prefix cache, so the timed steps are those of every
epoch after the first (the layers under the lowest intervened one are not run); the same
steps without that cache are timed too. The baseline injects PEFT LoRA (rank 8) into every
linear layer of the decoder layers, never the vision tower, and trains with CE on the same
answer tokens through the same ``model.score`` call, same batch, same sequence lengths, same
gradient clipping.

Peak memory: on CUDA ``max_memory_allocated`` above what was allocated before the variant; on
CPU each variant runs in its own process (``python -m benchmarks.distill_step --worker ...``)
and reports peak RSS above the RSS after model load (``getrusage``, with the high-water mark
reset once the variant is set up, where the kernel allows it).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import Figure, Inputs, Sizes, Stopwatch, load_bench_model, make_inputs, set_threads
from sdrt.adapters import lora_parameter_count
from sdrt.distill.config import DistillConfig
from sdrt.distill.data import DistillExample
from sdrt.distill.losses import answer_cross_entropy
from sdrt.distill.trainer import DistillTrainer
from sdrt.models.base import VisionLanguageModel
from sdrt.prompts.library import direct_prompt

LORA_RANK = 8
TIME_TARGET = 0.6
PARAM_TARGET = 0.1
RESULT_PREFIX = "RESULT "


@dataclass
class StepResult:
    variant: str
    seconds_per_step: float
    peak_mib: float
    trainable: int
    laps: list[float] = field(default_factory=list)
    online_seconds_per_step: float | None = None
    full_forward_seconds_per_step: float | None = None  # ours without the frozen-prefix cache
    lora_count_check: int | None = None


# --- inputs ------------------------------------------------------------------------------------------


def distill_examples(inputs: Inputs, analysis_words: int) -> list[DistillExample]:
    """Examples as ``sdrt distill`` reads them from traces, with stand-in analyses.

    The analyses are the scenes' exact descriptions cut to about the analysis budget, and the
    pseudo-label is the reference answer; only lengths matter for cost, and these are realistic.
    """
    k = len(inputs.prompts)
    out = []
    for record in inputs.records:
        words = str(record.metadata.get("description", record.question)).split()
        analysis = " ".join((words * (1 + analysis_words // max(len(words), 1)))[:analysis_words])
        out.append(
            DistillExample(
                record=record,
                pseudo_label=record.answers[0] if record.answers else "yes",
                prompt_ids=[p.id for p in inputs.prompts],
                analyses=[analysis] * k,
                weights=[1.0 / k] * k,
                agreement=1.0,
            )
        )
    return out


# --- memory -------------------------------------------------------------------------------------------


def rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def release_freed_memory() -> None:
    """Give freed heap back to the OS, so set-up garbage does not count as the step's memory."""
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextmanager
def peak_memory(device: torch.device, baseline_kib: int | None = None) -> Iterator[dict[str, float]]:
    """Yields a dict that holds ``peak_mib`` (above the baseline) when the block ends."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    release_freed_memory()
    base = baseline_kib if baseline_kib is not None else rss_kib()
    reset_peak_rss()
    yield result
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result["peak_mib"] = max(0.0, (peak - base) / 1024)


# --- the two variants --------------------------------------------------------------------------------


def make_trainer(model: VisionLanguageModel, inputs: Inputs, sizes: Sizes, out: Path) -> DistillTrainer:
    config = DistillConfig(
        model=model.name,
        out=out,
        batch_size=sizes.batch_size,
        steps=1000,
        warmup_steps=0,
        device=str(model.device),
    )
    examples = distill_examples(inputs.first(sizes.batch_size), sizes.analysis_tokens)
    return DistillTrainer(config, model, examples, inputs.library)


def use_precomputed_targets(trainer: DistillTrainer, model: VisionLanguageModel) -> None:
    """Compute every example's teacher targets now; the trainer then looks them up instead.

    ``del trainer.teacher_targets`` restores the online teacher.
    """
    targets = {}
    for ex in trainer.examples:
        images = model.encode_images([ex.record.load_image()])
        targets[ex.record.id] = trainer.teacher_targets([ex], images)[0]
    trainer.teacher_targets = lambda batch, images: [targets[ex.record.id] for ex in batch]


def run_ours(
    model: VisionLanguageModel, inputs: Inputs, sizes: Sizes, baseline_kib: int | None
) -> StepResult:
    """``DistillTrainer.train_step`` with precomputed teacher targets, then with the online teacher."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(model, inputs, sizes, Path(tmp))
        use_precomputed_targets(trainer, model)
        watch = Stopwatch()
        with trainer.adapter.attached(model):
            with peak_memory(model.device, baseline_kib) as memory:
                timed_steps(trainer.train_step, sizes, watch, model.device)
            prefix, trainer.prefix = trainer.prefix, None  # every layer, every step
            full = Stopwatch()
            timed_steps(trainer.train_step, sizes, full, model.device)
            trainer.prefix = prefix
            del trainer.teacher_targets  # back to the online teacher (forward without grad each step)
            online = Stopwatch()
            timed_steps(trainer.train_step, sizes, online, model.device)
        return StepResult(
            variant="ours",
            seconds_per_step=watch.seconds / sizes.distill_steps,
            peak_mib=memory["peak_mib"],
            trainable=trainer.adapter.trainable_parameters(),
            laps=watch.laps,
            online_seconds_per_step=online.seconds / sizes.distill_steps,
            full_forward_seconds_per_step=full.seconds / sizes.distill_steps,
        )


def inject_lora(model: VisionLanguageModel, rank: int = LORA_RANK) -> list[nn.Parameter]:
    """PEFT LoRA on every linear layer of the decoder layers (the vision tower is never touched)."""
    from peft import LoraConfig, inject_adapter_in_model

    layers = model.decoder_layers
    names = sorted(
        {name.rsplit(".", 1)[-1] for name, m in layers.named_modules() if isinstance(m, nn.Linear)}
    )
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=names, lora_dropout=0.0, bias="none")
    inject_adapter_in_model(config, layers)
    params = [p for name, p in layers.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_step_fn(
    model: VisionLanguageModel, examples: list[DistillExample], params: list[nn.Parameter]
) -> Callable[[], float]:
    """CE on the pseudo-label through ``model.score``: the same call, batch and tokens as ours."""
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    max_norm = DistillConfig().max_grad_norm

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        images = model.encode_images([ex.record.load_image() for ex in examples])
        prompts = [direct_prompt(ex.record.question, ex.record.choices) for ex in examples]
        out = model.score(images, prompts, [ex.pseudo_label for ex in examples])
        loss = answer_cross_entropy(out.answer_logits, out.answer_ids, out.answer_token_mask).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        return float(loss.detach())

    return step


def run_lora(
    model: VisionLanguageModel, inputs: Inputs, sizes: Sizes, baseline_kib: int | None
) -> StepResult:
    check = lora_parameter_count(model, rank=LORA_RANK)
    params = inject_lora(model)
    examples = distill_examples(inputs.first(sizes.batch_size), sizes.analysis_tokens)
    step = lora_step_fn(model, examples, params)
    watch = Stopwatch()
    with peak_memory(model.device, baseline_kib) as memory:
        timed_steps(step, sizes, watch, model.device)
    return StepResult(
        variant="lora",
        seconds_per_step=watch.seconds / sizes.distill_steps,
        peak_mib=memory["peak_mib"],
        trainable=sum(p.numel() for p in params),
        laps=watch.laps,
        lora_count_check=check,
    )


def timed_steps(step: Callable[[], object], sizes: Sizes, watch: Stopwatch, device: torch.device) -> None:
    for _ in range(sizes.warmup_steps):
        step()
    for _ in range(sizes.distill_steps):
        with watch.timing(device):
            step()


# --- orchestration ---------------------------------------------------------------------------------


def run_in_process(model: VisionLanguageModel, inputs: Inputs, sizes: Sizes) -> tuple[StepResult, StepResult]:
    """Both variants on one loaded model (CUDA): ours first, LoRA last, since it stays injected."""
    ours = run_ours(model, inputs, sizes, None)
    lora = run_lora(model, inputs, sizes, None)
    return ours, lora


def run_in_subprocesses(
    model_name: str, sizes: Sizes, threads: int, device: str = "cpu"
) -> tuple[StepResult, StepResult]:
    """Each variant in a fresh process, so each one's peak RSS is its own."""
    return tuple(_spawn(variant, model_name, sizes, threads, device) for variant in ("ours", "lora"))  # type: ignore[return-value]


def _spawn(variant: str, model_name: str, sizes: Sizes, threads: int, device: str) -> StepResult:
    args = [
        sys.executable,
        "-m",
        "benchmarks.distill_step",
        "--worker",
        variant,
        "--model",
        model_name,
        "--device",
        device,
        "--threads",
        str(threads),
        "--sizes",
        json.dumps(asdict(sizes)),
    ]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return StepResult(**json.loads(line.removeprefix(RESULT_PREFIX)))
    raise RuntimeError(
        f"distillation worker {variant!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    )


def worker(variant: str, model_name: str, sizes: Sizes, threads: int, device: str) -> StepResult:
    set_threads(threads)
    torch.manual_seed(0)
    loaded = load_bench_model(model_name, device=device)
    inputs = make_inputs(sizes.batch_size, sizes.k)
    release_freed_memory()
    after_load = rss_kib()
    run = run_ours if variant == "ours" else run_lora
    return run(loaded.model, inputs, sizes, after_load)


# --- the printed lines -------------------------------------------------------------------------------


def figures(ours: StepResult, lora: StepResult) -> list[Figure]:
    time_ratio = ours.seconds_per_step / lora.seconds_per_step
    param_ratio = ours.trainable / lora.trainable
    memory_ratio = ours.peak_mib / lora.peak_mib if lora.peak_mib > 0 else float("nan")
    online = ours.online_seconds_per_step or float("nan")
    return [
        Figure(
            name="distillation step",
            baseline=lora.seconds_per_step,
            ours=ours.seconds_per_step,
            unit="s/step",
            ratio=time_ratio,
            meaning="time, ours / LoRA r8",
            target=f"<= {TIME_TARGET:g}x",
            met=time_ratio <= TIME_TARGET,
        ),
        Figure(
            name="distillation parameters",
            baseline=float(lora.trainable),
            ours=float(ours.trainable),
            unit="trainable",
            ratio=param_ratio,
            meaning="ours / LoRA r8",
            target=f"<= {PARAM_TARGET:g}x",
            met=param_ratio <= PARAM_TARGET,
            details={"LoRA count by sdrt.adapters.lora_parameter_count": lora.lora_count_check or 0},
            by_design=True,
        ),
        Figure(
            name="distillation peak memory",
            baseline=lora.peak_mib,
            ours=ours.peak_mib,
            unit="MiB",
            ratio=memory_ratio,
            meaning="ours / LoRA r8",
        ),
        Figure(
            name="distillation step without the prefix cache",
            baseline=lora.seconds_per_step,
            ours=ours.full_forward_seconds_per_step or float("nan"),
            unit="s/step",
            ratio=(ours.full_forward_seconds_per_step or float("nan")) / lora.seconds_per_step,
            meaning="time with every layer run every step (an example's first epoch), ours / LoRA r8",
        ),
        Figure(
            name="distillation step online teacher",
            baseline=lora.seconds_per_step,
            ours=online,
            unit="s/step",
            ratio=online / lora.seconds_per_step,
            meaning="time with the teacher forward in the step, ours / LoRA r8",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one distillation-step variant in its own process")
    parser.add_argument("--worker", choices=("ours", "lora"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--sizes", required=True, help="Sizes as JSON")
    args = parser.parse_args(argv)
    raw = json.loads(args.sizes)
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    result = worker(args.worker, args.model, sizes, args.threads, args.device)
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main()
