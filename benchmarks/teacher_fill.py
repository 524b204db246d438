"""Teacher targets: batch by training batch (the first epoch's way) vs length-sorted rows.

``python -m benchmarks.teacher_fill --model embedded --traces docs/results/study-retained/traces-scenes``

Both sides compute the same teachers' targets (hidden states at the adapter's layers and the
answer's top-k log-probs) for the same examples of a real trace folder. The baseline is what the
first epoch does without a filled cache: ``compute_teacher_targets`` on each training batch of B
examples, its B·K rows padded to the batch's longest step-2 conversation. Ours is
``fill_teacher_cache``: every (example, prompt) row sorted by length and batched B·K rows at a
time, written to a teacher cache (the shard writes are timed too). The sides alternate, each
runs ``--repeats`` times and is compared by its fastest run. Real analyses matter here: what the
sort saves is the spread of their lengths.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import Figure, Stopwatch, batches, load_bench_model, set_threads
from sdrt.distill.config import DistillConfig
from sdrt.distill.data import DistillExample, load_distill_examples
from sdrt.distill.teacher import (
    TeacherCache,
    TeacherTargets,
    compute_teacher_targets,
    fill_teacher_cache,
    teacher_prompt,
)
from sdrt.distill.trainer import check_traces
from sdrt.models.base import VisionLanguageModel

TOP_K = DistillConfig.model_fields["top_k"].default


def by_training_batch(
    model: VisionLanguageModel, examples: list[DistillExample], layers: list[int], batch_size: int
) -> dict[str, TeacherTargets]:
    out = {}
    for part in batches(len(examples), batch_size):
        chunk = examples[part]
        images = model.encode_images([ex.record.load_image() for ex in chunk])
        targets = compute_teacher_targets(model, chunk, images, None, layers, TOP_K)
        out.update({ex.record.id: t for ex, t in zip(chunk, targets, strict=True)})
    return out


def sorted_rows(
    model: VisionLanguageModel, examples: list[DistillExample], layers: list[int], batch_size: int
) -> dict[str, TeacherTargets]:
    with tempfile.TemporaryDirectory() as folder:
        cache = TeacherCache(folder, "benchmark")
        rows_per_batch = batch_size * len(examples[0].prompt_ids)
        fill_teacher_cache(model, cache, examples, None, layers, TOP_K, rows_per_batch)
        return {ex.record.id: cache.get(ex.record.id) for ex in examples}


def padded_share(model: VisionLanguageModel, examples: list[DistillExample], rows_per_batch: int) -> dict:
    """Padding (in rendered characters, a proxy for tokens) of both ways of batching the rows."""
    lengths = [
        [len(model.render_prompt(teacher_prompt(ex, i, None))) for i in range(len(ex.prompt_ids))]
        for ex in examples
    ]
    training = [row for ex in lengths for row in ex]  # chunks of B·K rows: B examples, in training order
    ordered = sorted(training, reverse=True)

    def share(rows: list[int]) -> float:
        padded = sum(
            max(rows[s : s + rows_per_batch]) * len(rows[s : s + rows_per_batch])
            for s in range(0, len(rows), rows_per_batch)
        )
        return 1 - sum(rows) / padded

    return {"padding by training batch": share(training), "padding sorted": share(ordered)}


def largest_difference(a: dict[str, TeacherTargets], b: dict[str, TeacherTargets]) -> dict[str, float]:
    """The worst absolute difference, and the worst relative to the tensor's own largest value.

    In bfloat16, rows padded to other lengths round differently; the relative figure says how
    much that is against the states' scale (the hidden loss is a cosine, so scale is what counts).
    """
    worst, relative = 0.0, 0.0
    for key, target in a.items():
        pairs = [(h, b[key].hidden[layer]) for layer, h in target.hidden.items()]
        pairs.append((target.topk_logprobs, b[key].topk_logprobs))
        for mine, theirs in pairs:
            mine = mine.float()
            gap = float((mine - theirs.float()).abs().max())
            worst = max(worst, gap)
            relative = max(relative, gap / max(float(mine.abs().max()), 1e-12))
    return {"largest difference": worst, "largest relative difference": relative}


def measure(
    model: VisionLanguageModel, examples: list[DistillExample], batch_size: int, repeats: int
) -> Figure:
    k = len(examples[0].prompt_ids)
    layers = DistillConfig(model="embedded").adapter.resolved(model.num_layers, k).layers
    baseline, ours = Stopwatch(), Stopwatch()
    results: dict[str, dict[str, TeacherTargets]] = {}
    for repeat in range(repeats):  # alternate which side goes first
        sides = [("baseline", baseline, by_training_batch), ("ours", ours, sorted_rows)]
        for name, watch, run in sides if repeat % 2 == 0 else sides[::-1]:
            with torch.no_grad(), watch.timing(model.device):
                results[name] = run(model, examples, layers, batch_size)
    fastest_baseline, fastest_ours = min(baseline.laps), min(ours.laps)
    n = len(examples)
    return Figure(
        name="teacher targets (length-sorted rows against training batches)",
        baseline=fastest_baseline / n,
        ours=fastest_ours / n,
        unit="s/example",
        ratio=fastest_baseline / fastest_ours,
        meaning="speed-up, by training batch / sorted rows",
        details={
            "examples": n,
            "K": k,
            "rows per batch": batch_size * k,
            "repeats": repeats,
            **largest_difference(results["baseline"], results["ours"]),
            **padded_share(model, examples, batch_size * k),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.teacher_fill", description=__doc__)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--traces", type=Path, required=True, help="a trace folder of that model")
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16, help="training batch (examples)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", help="the study's precision")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    model = load_bench_model(args.model, dtype=args.dtype).model
    library = check_traces(args.traces, model)
    examples = load_distill_examples(args.traces, library=library)[: args.examples]
    figure = measure(model, examples, args.batch_size, args.repeats)
    print(figure.line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
