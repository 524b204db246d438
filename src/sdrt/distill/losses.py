"""The self-distillation loss terms, each per (example, teacher) so that weighting stays outside.

Shapes: B examples, K teachers (one per prompt), T aligned positions (the last prompt position
and the answer tokens), d hidden size, V vocabulary, k kept teacher log-probs per position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hidden_alignment(
    student: torch.Tensor,  # (B, T, d)
    teacher: torch.Tensor,  # (B, K, T, d)
    mask: torch.Tensor,  # (B, T) bool
    kind: str = "mse",
) -> torch.Tensor:
    """Per-teacher distance between hidden states on the aligned span: (B, K).

    ``mse`` is the mean squared error per element; ``cosine`` is 1 - cosine similarity per position.
    Both are averaged over the real positions of each row.
    """
    s = student.float().unsqueeze(1)  # (B, 1, T, d)
    t = teacher.float()
    if kind == "mse":
        per_position = (s - t).pow(2).mean(-1)  # (B, K, T)
    elif kind == "cosine":
        per_position = 1.0 - F.cosine_similarity(s, t, dim=-1)  # (B, K, T)
    else:
        raise ValueError(f"unknown hidden-state loss {kind!r}; use mse or cosine")
    m = mask.unsqueeze(1).float()  # (B, 1, T)
    return (per_position * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def answer_cross_entropy(
    logits: torch.Tensor,  # (B, T, V), logits predicting each answer token
    answer_ids: torch.Tensor,  # (B, T)
    mask: torch.Tensor,  # (B, T) bool
) -> torch.Tensor:
    """Mean token cross-entropy on the pseudo-label per example: (B,)."""
    token_nll = F.cross_entropy(logits.float().transpose(1, 2), answer_ids, reduction="none")  # (B, T)
    m = mask.float()
    return (token_nll * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def teacher_kl(
    logits: torch.Tensor,  # (B, T, V) student
    teacher_logprobs: torch.Tensor,  # (B, K, T, k) teacher's top-k log-probs
    teacher_ids: torch.Tensor,  # (B, K, T, k)
    mask: torch.Tensor,  # (B, T) bool
) -> torch.Tensor:
    """KL(teacher || student) on the teacher's top-k support, renormalised: (B, K).

    Keeping only the teacher's top-k tokens is what makes cached targets small (k·T numbers per
    teacher instead of V·T); the mass outside the top-k is dropped on both sides.
    """
    student_logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    b, k_teachers, t, k = teacher_ids.shape
    gathered = student_logp.unsqueeze(1).expand(b, k_teachers, t, -1).gather(-1, teacher_ids)  # (B, K, T, k)
    student_top = torch.log_softmax(gathered, dim=-1)
    teacher_top = torch.log_softmax(teacher_logprobs.float(), dim=-1)
    per_position = (teacher_top.exp() * (teacher_top - student_top)).sum(-1)  # (B, K, T)
    m = mask.unsqueeze(1).float()
    return (per_position * m).sum(-1) / m.sum(-1).clamp_min(1.0)
