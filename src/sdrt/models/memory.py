"""How many examples of a generation batch fit in the GPU memory that is free.

A user who gives no batch size gets one chosen here: on a GPU, as many rows as the free memory
holds at a safety margin, counting per token the KV cache of every layer (kept for the whole
generation) and the widest transient activations (the MLP's, during the prefill); on a CPU a
fixed default, since host memory is rarely what limits a CPU run. This is an estimate from the
architecture, not a probe: no trial batch is run.
"""

from __future__ import annotations

from typing import Any

import torch

CPU_DEFAULT = 8
HEADROOM = (
    0.7  # share of the free memory the batch may take (the allocator fragments, kernels need workspace)
)
MAX_EXAMPLES = 256


def bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """KV-cache bytes of one token in every layer, plus its widest transient activations."""
    layers, hidden = int(config.num_hidden_layers), int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    size = torch.finfo(dtype).bits // 8
    cache = 2 * layers * kv_heads * head_dim * size  # keys and values
    transient = 3 * int(getattr(config, "intermediate_size", None) or 4 * hidden) * size  # gate, up, act
    return cache + transient


def examples_that_fit(free_bytes: int, tokens_per_row: int, rows_per_example: int, per_token: int) -> int:
    """Examples whose rows (``rows_per_example`` each) fit in ``HEADROOM`` of ``free_bytes``."""
    rows = int(HEADROOM * free_bytes) // max(1, tokens_per_row * per_token)
    return max(1, min(MAX_EXAMPLES, rows // max(1, rows_per_example)))


def choose_batch_size(model: Any, tokens_per_row: int, rows_per_example: int) -> int:
    """Examples per batch for ``model``: from free CUDA memory on a GPU, ``CPU_DEFAULT`` elsewhere."""
    if model.device.type != "cuda":
        return CPU_DEFAULT
    free, _ = torch.cuda.mem_get_info(model.device)
    per_token = bytes_per_token(model.decoder_config, model.dtype)
    return examples_that_fit(free, tokens_per_row, rows_per_example, per_token)
