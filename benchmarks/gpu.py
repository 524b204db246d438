"""The figures at a real VLM's size on one GPU, offline: ``bash benchmarks/gpu.sh``.

No weights are downloaded: a Qwen2-VL model with Qwen2-VL-2B's published sizes is built with
random weights into a local folder (the tokenizer and processor come from the tiny-model
builder; the vocabulary is padded to 151,936 through the config), then loaded the way any
checkpoint is, ``HFVisionLanguageModel.from_pretrained(folder, device, dtype)``. Random weights
generate junk, but junk of the same length costs the same, and greedy runs never stop early.

``--device cpu --scale tiny`` runs the same code on a tiny model, so the script is tested
where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen2VLForConditionalGeneration,
)

from benchmarks import answering, distill_step, trace_generation
from benchmarks.common import Figure, Sizes, make_inputs, set_threads
from sdrt.models.hf import HFVisionLanguageModel
from sdrt.models.registry import LoadOptions
from sdrt.models.tiny import build_tokenizer, qwen2_vl_parts


@dataclass(frozen=True)
class Scale:
    """Sizes of the model to build (Qwen2-VL's config fields)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    mrope_section: tuple[int, int, int]
    vision_depth: int
    vision_embed: int
    vision_heads: int
    patch: int
    merge: int
    image_pixels: int  # images are resized to about this many pixels


SCALES = {
    # Qwen2-VL-2B-Instruct's published config.
    "2b": Scale(1536, 28, 12, 2, 8960, 151_936, (16, 24, 24), 32, 1280, 16, 14, 2, 448 * 448),
    # The tiny test model's sizes, with a vocabulary padded past the tokenizer as in "2b".
    "tiny": Scale(64, 2, 4, 2, 128, 1024, (2, 3, 3), 2, 32, 2, 4, 2, 32 * 32),
}


def qwen2_vl_parts_at(scale: Scale, tok) -> tuple:
    """Qwen2-VL's config and processor at ``scale`` (random weights are built from them)."""
    text = {
        "vocab_size": max(scale.vocab, len(tok)),
        "hidden_size": scale.hidden,
        "intermediate_size": scale.intermediate,
        "num_hidden_layers": scale.layers,
        "num_attention_heads": scale.heads,
        "num_key_value_heads": scale.kv_heads,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": list(scale.mrope_section),
        },
    }
    vision = {
        "depth": scale.vision_depth,
        "embed_dim": scale.vision_embed,
        "hidden_size": scale.hidden,
        "num_heads": scale.vision_heads,
        "mlp_ratio": 4,
    }
    pixels = (scale.image_pixels, scale.image_pixels)
    return qwen2_vl_parts(
        tok, text, vision, pixels=pixels, patch=scale.patch, merge=scale.merge, tie_word_embeddings=True
    )


def build_folder(scale: Scale, out: Path, device: str, dtype: torch.dtype) -> Path:
    """Random weights (built on ``device``, which is fast on a GPU) saved with their processor."""
    tok = build_tokenizer("qwen2-vl")
    config, processor = qwen2_vl_parts_at(scale, tok)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def nvidia_smi() -> str:
    """``nvidia-smi --query-gpu=name,memory.total --format=csv`` as one line (or why not)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi not available ({type(err).__name__})"
    return (
        " | ".join(line.strip() for line in done.stdout.splitlines() if line.strip()) or done.stderr.strip()
    )


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def run_figures(model: HFVisionLanguageModel, sizes: Sizes, gpu: str) -> list[Figure]:
    device = model.device
    inputs = make_inputs(sizes.examples, sizes.k)
    trace_generation.warm_up(model, inputs, sizes.budget)
    reset_peak(device)
    trace = trace_generation.measure(model, inputs, sizes.budget, sizes.batch_size)
    figures = trace_generation.figures(trace)
    figures[0].details |= {
        "tokens/s baseline": trace.naive_tokens / trace.naive.seconds,
        "tokens/s ours": trace.ours_tokens / trace.ours_mean.seconds,
        "peak GiB": peak_gib(device),
    }
    direct = answering.measure_adapter(model, inputs, sizes.budget, sizes.batch_size)
    figures.append(answering.figure(trace, direct))
    reset_peak(device)
    ours, lora = distill_step.run_in_process(model, inputs, sizes)
    figures += distill_step.figures(ours, lora)
    for figure in figures:
        figure.details["nvidia-smi"] = gpu
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", choices=tuple(SCALES), default="2b")
    parser.add_argument("--dtype", default=None, help="bfloat16 on cuda, float32 on cpu by default")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-bench"))
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    sizes = Sizes.choose(args.scale == "tiny", args.examples, args.k, args.batch_size)
    gpu = nvidia_smi()
    print(f"# nvidia-smi: {gpu}", flush=True)
    started = time.perf_counter()
    folder = build_folder(SCALES[args.scale], args.out / f"qwen2-vl-{args.scale}-random", args.device, dtype)
    built = time.perf_counter()
    model = HFVisionLanguageModel.from_pretrained(folder, LoadOptions(device=args.device, dtype=dtype_name))
    loaded = time.perf_counter()
    print(
        f"# built {args.scale} ({model.num_parameters():,} parameters) in {built - started:.0f} s, "
        f"loaded in {loaded - built:.0f} s; {sizes.examples} examples, K={sizes.k}, batch {sizes.batch_size}",
        flush=True,
    )
    figures = run_figures(model, sizes, gpu)
    for figure in figures:
        print(figure.line(), flush=True)
    print(f"# total {time.perf_counter() - started:.0f} s", flush=True)
    results = {
        "nvidia_smi": gpu,
        "scale": args.scale,
        "dtype": dtype_name,
        "figures": [asdict(f) for f in figures],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
