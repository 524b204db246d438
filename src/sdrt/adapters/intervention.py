"""Low-rank representation interventions on the residual stream (LoReFT-style).

The edit lives in an r-dimensional subspace spanned by the orthonormal rows of R, so it moves
hidden states only along r directions and leaves the rest of the residual stream untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal


class _SignDiagonal(nn.Module):
    """Snap the diagonal of the stored matrix to exactly +-1 (its sign).

    torch's Householder map reads the signs of its columns from that diagonal with an integer
    cast, so weight decay shrinking 1.0 to 0.999 would zero a row of R. Snapping first keeps R
    orthonormal under any optimiser; the diagonal carries no gradient either way.
    """

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(X.shape[-2], X.shape[-1], dtype=torch.bool, device=X.device)
        signs = torch.where(X >= 0, 1.0, -1.0).to(X.dtype)
        return torch.where(eye, signs, X)


def orthonormal_rows(d: int, rank: int) -> nn.Linear:
    """A bias-free ``Linear(d, rank)`` whose weight (rank, d) always has orthonormal rows.

    Householder map without trivialisation: the only stored tensor is (rank, d), so adapter
    files stay small (the trivialised form would also store a d x d base).
    """
    layer = nn.Linear(d, rank, bias=False)
    parametrize.register_parametrization(layer, "weight", _SignDiagonal())
    return orthogonal(layer, orthogonal_map="householder", use_trivialization=False)


def _fp32_region(device: torch.device) -> torch.autocast:
    """Turn autocast off so the edit runs in the adapter's own fp32 precision."""
    return torch.autocast(device_type=device.type, enabled=False)


def _broadcast_context(context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """A per-row context (B, r) against hidden (B, L, d) becomes (B, 1, r); else unchanged."""
    if hidden.dim() == 3 and context.dim() == 2:
        return context.unsqueeze(1)
    return context


class LoReFTIntervention(nn.Module):
    """``h <- h + R^T (W h + b + c - R h)``, R (r x d) with orthonormal rows.

    R is a bias-free ``Linear(d, r)`` under ``torch.nn.utils.parametrizations.orthogonal``
    (see ``orthonormal_rows``), so every optimiser step keeps ``R R^T = I``. ``W h + b`` is a
    ``Linear(d, r)``. ``c`` is an optional context (the cross-modal skip), one r-vector per row
    or per position.

    Zero initialisation: W starts as a copy of R and b as 0, and the edit is computed as
    ``R^T((W - R) h + b + c)``; with ``W - R`` exactly zero a fresh intervention is exactly
    the identity, while gradients still reach W and b from the first step (unlike a gate at 0).

    Parameters stay in fp32; under autocast or with a half-precision model the edit is computed
    in fp32 and the result is cast back to the hidden dtype. Dropout, if any, drops parts of the
    low-rank edit, never of h.
    """

    def __init__(self, d: int, rank: int, dropout: float = 0.0) -> None:
        super().__init__()
        if not 1 <= rank <= d:
            raise ValueError(f"rank must be in [1, {d}], got {rank}")
        self.d, self.rank = d, rank
        self.rotate = orthonormal_rows(d, rank)  # weight: R (r, d)
        self.source = nn.Linear(d, rank)  # W (r, d), b (r,)
        with torch.no_grad():
            self.source.weight.copy_(self.rotate.weight)
            self.source.bias.zero_()
        self.dropout = nn.Dropout(dropout)

    @property
    def R(self) -> torch.Tensor:  # noqa: N802 - the paper's name
        return self.rotate.weight  # (r, d)

    def delta(self, hidden: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The fp32 edit ``R^T (W h + b + c - R h)`` added to h: (..., d)."""
        with _fp32_region(hidden.device):
            R = self.R  # (r, d), computed once per call
            diff = nn.functional.linear(hidden.float(), self.source.weight - R, self.source.bias)  # (..., r)
            if context is not None:
                diff = diff + _broadcast_context(context.float(), hidden)
            return self.dropout(diff) @ R  # (..., d)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        with _fp32_region(hidden.device):
            return (hidden.float() + self.delta(hidden, context)).to(hidden.dtype)


class MixedLoReFT(nn.Module):
    """K LoReFT heads mixed per row: ``h <- h + sum_k g_k R_k^T (W_k h + b_k + c - R_k h)``.

    ``g`` (B, K) or (N, K) are mixing weights (rows summing to 1) from the prompt gate; each
    head can specialise on one prompt of the library. Zero-initialised like its heads.
    """

    def __init__(self, d: int, rank: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = nn.ModuleList(LoReFTIntervention(d, rank, dropout) for _ in range(num_heads))

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def forward(
        self, hidden: torch.Tensor, weights: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        with _fp32_region(hidden.device):
            g = _broadcast_context(weights.float(), hidden)  # (..., K)
            total = hidden.float()  # (..., d)
            for k, head in enumerate(self.heads):
                total = total + g[..., k : k + 1] * head.delta(hidden, context)
            return total.to(hidden.dtype)
