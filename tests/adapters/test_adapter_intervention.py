"""LoReFT intervention: the formula, orthonormal R under training, exact identity at init, dtypes."""

from __future__ import annotations

import pytest
import torch

from sdrt.adapters.intervention import LoReFTIntervention, MixedLoReFT

D, RANK = 12, 3


def _randomise(interv: LoReFTIntervention, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        interv.source.weight.copy_(torch.randn(RANK, D, generator=gen))
        interv.source.bias.copy_(torch.randn(RANK, generator=gen))


def test_edit_equals_formula_computed_independently() -> None:
    torch.manual_seed(0)
    interv = LoReFTIntervention(D, RANK)
    _randomise(interv)
    R = interv.R.detach().clone()  # (r, d)
    W, b = interv.source.weight.detach().clone(), interv.source.bias.detach().clone()
    h = torch.randn(2, 5, D)
    c = torch.randn(2, RANK)  # one context per row
    expected = h + (h @ W.T + b + c[:, None, :] - h @ R.T) @ R
    got = interv(h, c)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # gathered positions (N, d) with a per-position context (N, r)
    flat_c = c[:, None, :].expand(2, 5, RANK).reshape(10, RANK)
    flat = interv(h.reshape(10, D), flat_c)
    torch.testing.assert_close(flat, expected.reshape(10, D), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, h), "a randomised intervention must change h"


def test_R_rows_stay_orthonormal_under_adamw_with_weight_decay() -> None:
    torch.manual_seed(0)
    interv = LoReFTIntervention(D, RANK)
    _randomise(interv)
    eye = torch.eye(RANK)
    torch.testing.assert_close(interv.R @ interv.R.T, eye, rtol=0, atol=1e-5)
    before = interv.R.detach().clone()
    opt = torch.optim.AdamW(interv.parameters(), lr=0.05, weight_decay=0.5)
    for _ in range(10):
        loss = (interv(torch.randn(8, D)) - torch.randn(8, D)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    R = interv.R.detach()
    assert not torch.allclose(R, before), "training must move R"
    torch.testing.assert_close(R @ R.T, eye, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fresh_intervention_is_exactly_identity(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    h = torch.randn(3, 7, D).to(dtype)
    assert torch.equal(LoReFTIntervention(D, RANK)(h), h)
    assert torch.equal(MixedLoReFT(D, RANK, 3)(h, torch.full((3, 3), 1 / 3)), h)


def test_fresh_intervention_still_gets_gradients() -> None:
    interv = LoReFTIntervention(D, RANK)
    interv(torch.randn(4, D)).pow(2).sum().backward()
    assert interv.source.weight.grad.abs().sum() > 0
    assert interv.source.bias.grad.abs().sum() > 0


def test_half_hidden_gets_fp32_edit_cast_back() -> None:
    torch.manual_seed(0)
    interv = LoReFTIntervention(D, RANK)
    _randomise(interv)
    h = torch.randn(4, D).to(torch.bfloat16)
    out = interv(h)
    assert out.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in interv.parameters())
    expected = (h.float() + interv.delta(h)).to(torch.bfloat16)
    assert torch.equal(out, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = interv(h)
    assert torch.equal(under_autocast, expected)


def test_mixture_is_weighted_sum_of_head_edits() -> None:
    torch.manual_seed(0)
    mixed = MixedLoReFT(D, RANK, 2)
    for k, head in enumerate(mixed.heads):
        _randomise(head, seed=10 + k)
    h, c = torch.randn(3, D), torch.randn(3, RANK)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.25, 0.75]])
    expected = h + g[:, :1] * mixed.heads[0].delta(h, c) + g[:, 1:] * mixed.heads[1].delta(h, c)
    torch.testing.assert_close(mixed(h, g, c), expected)
    torch.testing.assert_close(mixed(h[:1], g[:1], c[:1]), mixed.heads[0](h[:1], c[:1]))


def test_rank_above_hidden_size_is_refused() -> None:
    with pytest.raises(ValueError, match="rank"):
        LoReFTIntervention(4, 5)
