"""easy-vqa test accuracy of the embedded VLM on a fixed seeded sample, with seconds per answer.

    python scripts/eval_embedded.py --n 500 --seed 0 [--weights DIR] [--record]

Accuracy is exact match after lower-casing and stripping; prompts are the direct-mode prompts
the evaluation stage sends. ``--record`` writes the result into the weights' JSON config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sdrt.data.easyvqa import read_easy_vqa
from sdrt.models.base import ModelError
from sdrt.models.embedded import CONFIG_FILE, WEIGHTS_DIR, EmbeddedVLM
from sdrt.prompts.library import direct_prompt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="test questions in the seeded sample")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="time the first batch too")
    parser.add_argument("--record", action="store_true", help="store the result in the weights' config")
    parser.add_argument("--show-errors", type=int, default=10, help="print this many wrong answers")
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    vlm = EmbeddedVLM.load(weights_dir=args.weights)
    records = read_easy_vqa("test", limit=args.n, seed=args.seed)
    images = vlm.encode_images([r.load_image() for r in records])  # warm the feature cache, untimed
    if args.warmup:
        # CPU kernels are prepared once per tensor shape; one untimed batch keeps that one-off
        # cost out of the per-answer time.
        chunk = records[: args.batch_size]
        vlm.generate(
            images[: len(chunk)],
            [direct_prompt(r.question) for r in chunk],
            max_new_tokens=args.max_new_tokens,
        )
    correct, wrong, seconds = 0, [], 0.0
    for start in range(0, len(records), args.batch_size):
        chunk = records[start : start + args.batch_size]
        clock = time.perf_counter()
        generations = vlm.generate(
            [images[start + i] for i in range(len(chunk))],
            [direct_prompt(r.question) for r in chunk],
            max_new_tokens=args.max_new_tokens,
        )
        seconds += time.perf_counter() - clock
        for record, generation in zip(chunk, generations, strict=True):
            predicted, expected = generation.text.strip().lower(), record.answers[0].strip().lower()
            correct += predicted == expected
            if predicted != expected:
                wrong.append((record.question, expected, predicted))
    for question, expected, predicted in wrong[: args.show_errors]:
        print(f"  wrong: {question!r}: expected {expected!r}, got {predicted!r}")
    return {
        "benchmark": "easy-vqa test",
        "questions": len(records),
        "sample_seed": args.seed,
        "accuracy": round(correct / len(records), 4),
        "seconds_per_answer": round(seconds / len(records), 4),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "warmup_batch_untimed": args.warmup,
        "command": "python scripts/eval_embedded.py " + " ".join(sys.argv[1:]),
    }


def record_result(weights: Path | None, result: dict[str, object]) -> None:
    path = (weights or WEIGHTS_DIR) / CONFIG_FILE
    config = json.loads(path.read_text()) if path.is_file() else {}
    config["evaluation"] = result
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = evaluate(args)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if args.record:
        record_result(args.weights, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
