"""Teacher weighting of the distillation loss, and the prompt gate."""

from __future__ import annotations

import pytest
import torch

from sdrt.adapters.weighting import PromptGate, gate_loss, pool_prompt_states, weighted_teacher_loss
from sdrt.models.base import TokenLayout

LOSSES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 2.0]])
WEIGHTS = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])


def test_given_weights() -> None:
    # row 0: 0.5*1 + 0.5*2 = 1.5; row 1: 0.75*2 = 1.5
    assert weighted_teacher_loss(LOSSES, WEIGHTS).item() == pytest.approx(1.5)


def test_uniform_weights() -> None:
    # row means 2.0 and 2.0
    assert weighted_teacher_loss(LOSSES, uniform=True).item() == pytest.approx(2.0)
    assert weighted_teacher_loss(LOSSES, WEIGHTS, uniform=True).item() == pytest.approx(2.0)
    assert weighted_teacher_loss(LOSSES, None).item() == pytest.approx(2.0)


def test_no_gradient_into_weights_but_into_losses() -> None:
    losses = LOSSES.clone().requires_grad_()
    weights = WEIGHTS.clone().requires_grad_()
    weighted_teacher_loss(losses, weights).backward()
    assert weights.grad is None
    torch.testing.assert_close(losses.grad, WEIGHTS / 2)


def test_bad_weights_report_every_problem() -> None:
    bad = torch.tensor([[0.5, 0.6, -0.1], [0.2, 0.2, 0.2]])
    with pytest.raises(ValueError) as err:
        weighted_teacher_loss(LOSSES, bad)
    assert "negative" in str(err.value) and "rows [1]" in str(err.value)
    with pytest.raises(ValueError, match="K=2"):
        weighted_teacher_loss(LOSSES, torch.tensor([[0.5, 0.5], [1.0, 0.0]]))


def test_gate_uniform_at_init_and_learns_targets() -> None:
    torch.manual_seed(0)
    gate = PromptGate(8, 3)
    pooled = torch.randn(4, 8)
    g = gate(pooled)
    torch.testing.assert_close(g.sum(-1), torch.ones(4))
    torch.testing.assert_close(g, torch.full((4, 3), 1 / 3))
    assert gate_loss(g, torch.full((4, 3), 1 / 3)).item() == pytest.approx(0.0, abs=1e-7)
    target = torch.tensor([[1.0, 0.0, 0.0]] * 2 + [[0.0, 0.2, 0.8]] * 2)
    opt = torch.optim.Adam(gate.parameters(), lr=0.1)
    first = gate_loss(gate(pooled), target).item()
    for _ in range(50):
        loss = gate_loss(gate(pooled), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 4
    torch.testing.assert_close(gate(pooled).sum(-1), torch.ones(4))


def test_pool_prompt_states_ignores_padding_and_answer() -> None:
    layout = TokenLayout(
        torch.tensor([[False, True, True, True]]),
        torch.tensor([[False, True, False, False]]),
        torch.tensor([[False, False, False, True]]),
    )
    hidden = torch.tensor([[[100.0], [1.0], [3.0], [50.0]]])
    assert pool_prompt_states(hidden, layout).tolist() == [[2.0]]
