"""Ensemble weighting over the K prompts of the library.

Two pieces:

* the distillation loss over K teachers per example, ``mean_b sum_k w_bk L_bk``, with the
  per-example weights ``w`` from the trace generator (agreement with the ensemble answer and
  answer likelihood) or uniform ``1/K``;
* an optional learned gate that predicts those weights from the student's own pooled prompt
  state and mixes K intervention heads, so inference stays one pass and needs no reasoning
  prompt. It is trained towards the teacher weights with ``gate_loss``.
"""

from __future__ import annotations

import torch
from torch import nn

from sdrt.models.base import TokenLayout

WEIGHT_TOLERANCE = 1e-4


def check_prompt_weights(weights: torch.Tensor, num_teachers: int | None = None) -> None:
    """Raise ``ValueError`` unless ``weights`` is (B, K), non-negative, rows summing to 1."""
    problems: list[str] = []
    if weights.dim() != 2:
        raise ValueError(f"prompt weights must be (B, K), got shape {tuple(weights.shape)}")
    if num_teachers is not None and weights.shape[1] != num_teachers:
        problems.append(f"weights have K={weights.shape[1]}, losses have K={num_teachers}")
    if (weights < 0).any():
        problems.append("weights are negative somewhere")
    sums = weights.sum(1)
    bad = (sums - 1).abs() > WEIGHT_TOLERANCE
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        problems.append(f"rows {rows} do not sum to 1 (sums {sums[bad].tolist()})")
    if problems:
        raise ValueError("bad prompt weights: " + "; ".join(problems))


def weighted_teacher_loss(
    losses: torch.Tensor, weights: torch.Tensor | None = None, *, uniform: bool = False
) -> torch.Tensor:
    """``mean_b sum_k w_bk L_bk`` over per-teacher losses (B, K) -> scalar.

    ``uniform=True`` (or ``weights=None``) uses ``w_bk = 1/K``: the plain mean over teachers.
    Weights are treated as constants (no gradient flows into them).
    """
    if losses.dim() != 2:
        raise ValueError(f"per-teacher losses must be (B, K), got shape {tuple(losses.shape)}")
    if uniform or weights is None:
        return losses.mean(1).mean()
    check_prompt_weights(weights, losses.shape[1])
    w = weights.detach().to(losses.dtype)  # (B, K)
    return (w * losses).sum(1).mean()


def pool_prompt_states(hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Mean of each row's prompt states (image and text, no answer, no padding): (B, d) in fp32.

    The same in ``score`` and at generation prefill, since both see the same prompt tokens.
    """
    weights = layout.prompt_mask.to(device=hidden.device, dtype=torch.float32)  # (B, L)
    counts = weights.sum(1, keepdim=True).clamp(min=1.0)  # (B, 1)
    return torch.einsum("bl,bld->bd", weights, hidden.float()) / counts  # (B, d)


class PromptGate(nn.Module):
    """``g = softmax(G p + a)`` with p the pooled prompt state: K mixing weights per row.

    G and a start at zero, so a fresh gate gives uniform weights ``1/K``.
    """

    def __init__(self, d: int, num_heads: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, num_heads)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            return torch.softmax(self.proj(pooled.float()), dim=-1)  # (B, K)


def gate_loss(gate_weights: torch.Tensor, target_weights: torch.Tensor) -> torch.Tensor:
    """``mean_b KL(w_b || g_b)``: pulls the gate towards the teacher weights; 0 when they match."""
    check_prompt_weights(target_weights, gate_weights.shape[1])
    target = target_weights.detach().to(gate_weights.dtype)
    log_gate = torch.log(gate_weights.clamp(min=torch.finfo(gate_weights.dtype).tiny))
    return nn.functional.kl_div(log_gate, target, reduction="batchmean")
