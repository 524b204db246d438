"""The frozen prefix of the student's forward, computed once per example and reused every epoch.

Below the lowest intervened layer nothing trains: the student's states there depend only on the
example (its image, the direct prompt, the pseudo-label), so after an example's first step they
are kept, and later steps run only the upper layers (``VisionLanguageModel.prefix_replaced``).
Kept per example, at its real positions only: the output of the layer just below the lowest
intervened one, and of the skip's source layer (its hook reads it). Memory is bounded: once
``max_bytes`` is reached, further examples are computed in full every time (counted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class FrozenPrefixCache:
    def __init__(self, below: int, layers: Sequence[int], max_bytes: int) -> None:
        """``below``: the first layer that computes; ``layers``: the prefix layers to keep (< below)."""
        if not all(0 <= layer < below for layer in layers) or below - 1 not in layers:
            raise ValueError(f"prefix layers {list(layers)} must lie below {below} and include {below - 1}")
        self.below = below
        self.layers = sorted(set(layers))
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.full_computes = 0  # examples computed in full because the cache was full
        self._states: dict[str, dict[int, torch.Tensor]] = {}  # example id -> layer -> (L_ex, d)

    def has(self, ids: Sequence[str]) -> bool:
        return all(i in self._states for i in ids)

    def put(
        self, ids: Sequence[str], captured: dict[int, torch.Tensor], attention_mask: torch.Tensor
    ) -> None:
        """Keep each row's real positions of the captured prefix layers (left padding dropped)."""
        for row, example_id in enumerate(ids):
            if example_id in self._states:
                continue
            real = attention_mask[row].bool()
            states = {layer: captured[layer][row, real].detach().to("cpu") for layer in self.layers}
            size = sum(t.numel() * t.element_size() for t in states.values())
            if self.used_bytes + size > self.max_bytes:
                self.full_computes += 1
                continue
            self._states[example_id] = states
            self.used_bytes += size

    def supply(self, ids: Sequence[str], device: torch.device) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """For ``prefix_replaced``: layer i's kept outputs of these rows, left-padded to the batch."""

        def output(layer: int, hidden_in: torch.Tensor) -> torch.Tensor:
            if layer not in self.layers:
                return hidden_in  # nothing reads it: the next kept layer overrides what follows
            out = torch.zeros_like(hidden_in)  # (B, W, d); padding positions are masked anyway
            width = hidden_in.shape[1]
            for row, example_id in enumerate(ids):
                kept = self._states[example_id][layer]  # (L_ex, d)
                out[row, width - kept.shape[0] :] = kept.to(device=device, dtype=hidden_in.dtype)
            return out

        return output
