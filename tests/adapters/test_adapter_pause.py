"""Pause slots: learned states at the last prompt positions, added at the lowest intervened layer."""

from __future__ import annotations

import torch

from sdrt.adapters.config import AdapterConfig
from sdrt.adapters.files import load_adapter, save_adapter
from sdrt.adapters.model import SDRTAdapter

D = 16
ROWS = ["..iittttaa", "iitttttaaa"]  # the last two prompt positions of each row are pause slots


def inputs(rows: list[str]) -> torch.Tensor:
    return torch.randn(len(rows), len(rows[0]), D, generator=torch.Generator().manual_seed(0))


def pause_adapter(model, pause: int = 2) -> SDRTAdapter:
    config = AdapterConfig(layers=[1, 3], rank=4, positions=["answer"], pause_tokens=pause)
    return SDRTAdapter.for_model(config, model)


def test_each_slot_gets_its_own_state_at_the_lowest_layer_only(standin, layout) -> None:
    model = standin(D)
    x, lay = inputs(ROWS), layout(ROWS)
    base = model(x, lay)
    adapter = pause_adapter(model)
    states = torch.randn(2, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapter.pause_states.copy_(states)
    with adapter.attach(model):  # the interventions are fresh (the identity): only the states act
        edited = model(x, lay)
    assert torch.equal(edited[0], base[0])  # below the lowest intervened layer
    added = edited[1] - base[1]
    expected = torch.zeros_like(added)
    expected[0, 6:8], expected[1, 5:7] = states, states  # first slot, second slot, in each row
    torch.testing.assert_close(added, expected)


def test_a_fresh_pause_adapter_is_the_identity_and_its_states_learn(standin, layout) -> None:
    model = standin(D)
    x, lay = inputs(ROWS), layout(ROWS)
    base = model(x, lay)
    adapter = pause_adapter(model)
    with adapter.attach(model):
        edited = model(x, lay)
    assert all(torch.equal(a, b) for a, b in zip(base, edited, strict=True))
    edited[-1][:, -1].sum().backward()  # the standin mixes no tokens: the slot's own output
    assert adapter.pause_states.grad is None or not adapter.pause_states.grad.any()
    adapter.zero_grad()
    with adapter.attach(model):
        model(x, lay)[-1][lay.last_prompt_positions(2)].pow(2).sum().backward()
    assert adapter.pause_states.grad.abs().sum(-1).gt(0).all()  # every slot's state


def test_decode_steps_add_no_pause_state(standin, layout) -> None:
    model = standin(D)
    adapter = pause_adapter(model)
    with torch.no_grad():
        adapter.pause_states.normal_()
    step = torch.randn(2, 1, D)
    plain = model.decode(step)
    with adapter.attach(model):
        model(inputs(ROWS)[:, :-2], layout([r[:-2] for r in ROWS]))  # prefill
        assert all(torch.equal(a, b) for a, b in zip(plain, model.decode(step), strict=True))


def test_pause_states_are_saved_and_loaded_with_their_count(standin, tmp_path) -> None:
    model = standin(D)
    adapter = pause_adapter(model, pause=3)
    with torch.no_grad():
        adapter.pause_states.normal_()
    loaded = load_adapter(save_adapter(adapter, tmp_path), model)
    assert loaded.pause_tokens == 3
    assert torch.equal(loaded.pause_states, adapter.pause_states)
    assert loaded.trainable_parameters() == pause_adapter(model, pause=0).trainable_parameters() + 3 * D
