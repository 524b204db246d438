import math

import pytest
import torch

from sdrt.distill.losses import answer_cross_entropy, hidden_alignment, teacher_kl


def test_hidden_alignment_mse_by_hand():
    student = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [9.0, 9.0]]])  # (1, 3, 2); last position masked
    teacher = torch.tensor([[[[0.0, 1.0], [0.0, 2.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]]])
    mask = torch.tensor([[True, True, False]])
    loss = hidden_alignment(student, teacher, mask, "mse")
    # teacher 0: position 0 -> (1 + 0) / 2 = 0.5, position 1 -> (0 + 4) / 2 = 2 ; mean 1.25. teacher 1: 0
    assert loss.shape == (1, 2)
    assert loss[0, 0].item() == pytest.approx(1.25)
    assert loss[0, 1].item() == pytest.approx(0.0)


def test_hidden_alignment_cosine_by_hand():
    student = torch.tensor([[[1.0, 0.0]]])
    teacher = torch.tensor([[[[0.0, 1.0]], [[2.0, 0.0]]]])
    loss = hidden_alignment(student, teacher, torch.tensor([[True]]), "cosine")
    assert loss[0].tolist() == pytest.approx([1.0, 0.0])


def test_unknown_hidden_loss_kind():
    with pytest.raises(ValueError, match="unknown hidden-state loss"):
        hidden_alignment(
            torch.zeros(1, 1, 2), torch.zeros(1, 1, 1, 2), torch.ones(1, 1, dtype=torch.bool), "l1"
        )


def test_cross_entropy_ignores_padding():
    logits = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])  # second token is padding
    ids = torch.tensor([[1, 1]])
    loss = answer_cross_entropy(logits, ids, torch.tensor([[True, False]]))
    assert loss.item() == pytest.approx(math.log(2))


def test_kl_zero_when_student_equals_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    logp = torch.log_softmax(logits, -1)
    top, ids = logp.topk(4, -1)
    teacher_logp, teacher_ids = top.unsqueeze(1), ids.unsqueeze(1)  # K = 1
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert teacher_kl(logits, teacher_logp, teacher_ids, mask).abs().max().item() < 1e-6
    assert teacher_kl(torch.randn(2, 3, 11), teacher_logp, teacher_ids, mask).min().item() > 0
