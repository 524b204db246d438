"""Cross-modal skip connection: late text positions re-read a summary of the image.

At an early decoder layer the image-token states of each row are mean-pooled, projected to a
small ``rank_skip`` summary, and at every intervened layer mapped to an r-vector context that
enters that layer's intervention at text and answer positions:

    s   = D mean_{i in image(b)} h_i          (B, rank_skip), D: Linear(d, rank_skip)
    c_l = U_l s                               (B, r),         U_l: Linear(rank_skip, r), zero-init

The image tokens are only in the hidden states at prefill (or in a ``score`` forward); during
KV-cached decode steps they sit in the cache, so the summary computed at prefill is kept and
reused until the next prefill replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def pool_image_states(hidden: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each row's image-token states, in fp32: (B, L, d) + (B, L) -> (B, d).

    A row without image tokens pools to zeros (its context is then the bias-free zero).
    """
    weights = image_mask.to(torch.float32)  # (B, L)
    counts = weights.sum(1, keepdim=True).clamp(min=1.0)  # (B, 1)
    return torch.einsum("bl,bld->bd", weights, hidden.float()) / counts  # (B, d)


class CrossModalSkip(nn.Module):
    """``c_l = U_l D mean(image states)``: one shared down-projection, one up-projection per layer.

    ``U_l`` starts at zero, so a fresh skip feeds a zero context and changes nothing; ``D``
    starts random so that ``U_l`` gets a gradient from the first step.
    """

    def __init__(self, d: int, rank_skip: int, rank: int, layers: Sequence[int]) -> None:
        super().__init__()
        self.down = nn.Linear(d, rank_skip, bias=False)
        self.up = nn.ModuleDict({str(layer): nn.Linear(rank_skip, rank, bias=False) for layer in layers})
        for up in self.up.values():
            nn.init.zeros_(up.weight)
        self._summary: torch.Tensor | None = None  # (B, rank_skip), kept between decode steps

    def summarise(self, hidden: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """Pool and project the image states of a prefill / score forward; keep the result."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            self._summary = self.down(pool_image_states(hidden, image_mask.to(hidden.device)))
        return self._summary

    @property
    def summary(self) -> torch.Tensor | None:
        return self._summary

    def context(self, layer: int) -> torch.Tensor:
        """The r-vector context of ``layer`` from the kept summary: (B, r)."""
        if self._summary is None:
            raise RuntimeError("cross-modal skip: no image summary yet (no prefill ran since reset)")
        with torch.autocast(device_type=self._summary.device.type, enabled=False):
            return self.up[str(layer)](self._summary)

    def reset(self) -> None:
        self._summary = None
