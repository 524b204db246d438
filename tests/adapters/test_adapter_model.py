"""SDRTAdapter on a stand-in VLM: identity at init, positions, skip, gate, hooks, sizes."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

import sdrt.adapters.skip as skip_module
from sdrt.adapters.config import AdapterConfig, AdapterError
from sdrt.adapters.model import (
    SDRTAdapter,
    lora_parameter_count,
    lora_parameter_count_by_shapes,
    lora_parameter_count_with_peft,
)

D = 16
ROWS = ["..iiittaa", "iiiitttaa"]  # left-padded score batch: image, prompt text, two answer tokens
PROMPTS = [row[:-2] for row in ROWS]  # the same rows at prefill, before the answer is generated


def make_adapter(model, **overrides) -> SDRTAdapter:
    settings = {"layers": [2, 3], "rank": 4, "positions": ["last_prompt:2", "answer"], **overrides}
    return SDRTAdapter.for_model(AdapterConfig(**settings), model)


def randomise(adapter: SDRTAdapter, seed: int = 0, skip: bool = True) -> None:
    """Non-zero W, b (and skip up-projections) so the adapter edits something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if "source" in name or (skip and "skip.up" in name):
                p.copy_(torch.randn(p.shape, generator=gen))


def inputs(rows: list[str], seed: int = 0) -> torch.Tensor:
    return torch.randn(len(rows), len(rows[0]), D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "features", [{}, {"skip": {"enabled": True}}, {"gate": {"enabled": True, "num_heads": 3}}]
)
def test_fresh_adapter_leaves_outputs_unchanged(standin, layout, features) -> None:
    model = standin(D)
    x, lay = inputs(ROWS), layout(ROWS)
    base = model(x, lay)
    adapter = make_adapter(model, **features)
    with adapter.attach(model):
        edited = model(x, lay)
    assert all(torch.equal(a, b) for a, b in zip(base, edited, strict=True))


def test_only_selected_positions_change_from_the_first_intervened_layer(standin, layout) -> None:
    model = standin(D)
    x, lay = inputs(ROWS), layout(ROWS)
    base = model(x, lay)
    adapter = make_adapter(model, layers=[1, 3])
    randomise(adapter)
    with adapter.attach(model):
        edited = model(x, lay)
    changed = [(a - b).abs().sum(-1) > 0 for a, b in zip(base, edited, strict=True)]
    expected = torch.tensor([[c in "x" for c in row] for row in ["-----xxxx", "-----xxxx"]])
    assert not changed[0].any()
    for layer in (1, 2, 3):
        assert torch.equal(changed[layer], expected), layer


def test_handle_removes_hooks_and_detached_reattaches(standin, layout) -> None:
    model = standin(D)
    x, lay = inputs(ROWS), layout(ROWS)
    base = model(x, lay)[-1]
    adapter = make_adapter(model)
    randomise(adapter)
    with adapter.attached(model):
        edited = model(x, lay)[-1]
        with pytest.raises(AdapterError, match="already attached"):
            adapter.attach(model)
        with adapter.detached(model):
            assert torch.equal(model(x, lay)[-1], base)
        assert torch.equal(model(x, lay)[-1], edited)
    assert not adapter.is_attached
    assert torch.equal(model(x, lay)[-1], base)
    handle = adapter.attach(model)
    handle.remove()
    assert torch.equal(model(x, lay)[-1], base)
    adapter.detach()  # no-op when not attached


def test_model_checks_gather_every_problem(standin) -> None:
    model = standin(D, num_layers=4)
    config = AdapterConfig(layers=[1, 9, 12], rank=32, skip={"enabled": True, "source_layer": 0, "rank": 40})
    with pytest.raises(AdapterError) as err:
        SDRTAdapter.for_model(config, model)
    message = str(err.value)
    for part in ("layer 9", "layer 12", "rank 32", "skip.rank 40"):
        assert part in message
    other = standin(D, num_layers=5)
    adapter = make_adapter(model)
    with pytest.raises(AdapterError, match="config hash"):
        adapter.attach(other)


def test_config_rejects_skip_source_not_below_layers() -> None:
    with pytest.raises(pydantic.ValidationError, match="below every intervened layer"):
        AdapterConfig(layers=[2, 3], skip={"enabled": True, "source_layer": 2})
    with pytest.raises(pydantic.ValidationError, match="repeat"):
        AdapterConfig(layers=[2, 2])
    with pytest.raises(pydantic.ValidationError, match="bogus"):
        AdapterConfig(layers=[2], positions=["bogus"])
    with pytest.raises(pydantic.ValidationError):
        AdapterConfig(layers=[2], unknown_key=1)


def test_skip_off_never_summarises_and_equals_zero_skip(standin, layout, monkeypatch) -> None:
    model = standin(D)
    x, lay = inputs(ROWS), layout(ROWS)
    with_skip = make_adapter(model, skip={"enabled": True, "source_layer": 1})
    randomise(with_skip, skip=False)  # skip up-projection stays zero
    without = make_adapter(model)
    without.load_state_dict(with_skip.state_dict(), strict=False)
    assert not any(name.startswith("skip") for name in without.state_dict())
    with with_skip.attach(model):
        expected = model(x, lay)

    def forbidden(*args, **kwargs):
        raise AssertionError("image summary computed with skip off")

    monkeypatch.setattr(skip_module, "pool_image_states", forbidden)
    with without.attach(model):
        got = model(x, lay)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_skip_changes_text_and_answer_positions_only(standin, layout) -> None:
    model = standin(D)
    rows = ["..ttiiiaa", "tttiiiiaa"]  # image right before the answer: last_prompt:4 covers image tokens
    x, lay = inputs(rows), layout(rows)
    settings = {"layers": [2, 3], "positions": ["last_prompt:4", "answer"]}
    on = make_adapter(model, skip={"enabled": True, "source_layer": 1}, **settings)
    randomise(on)
    off = make_adapter(model, **settings)
    off.load_state_dict(on.state_dict(), strict=False)
    with off.attach(model):
        base = model(x, lay)
    with on.attach(model):
        edited = model(x, lay)
    changed = [(a - b).abs().sum(-1) > 0 for a, b in zip(base, edited, strict=True)]
    assert not changed[0].any() and not changed[1].any()
    # last_prompt:4 = one text + three image tokens; only the text one and the answer get context
    expected = torch.tensor([[c == "x" for c in row] for row in ["---x---xx", "-------xx"]])
    assert torch.equal(changed[2], expected) and torch.equal(changed[3], expected)


@pytest.mark.parametrize(
    "features", [{"skip": {"enabled": True}}, {"gate": {"enabled": True, "num_heads": 3}}]
)
def test_decode_steps_reuse_prefill_state_and_match_score(standin, layout, monkeypatch, features) -> None:
    model = standin(D)
    adapter = make_adapter(model, **features)
    randomise(adapter)
    with torch.no_grad():
        for gate in (adapter.gates or {}).values():
            gate.proj.weight.normal_()
    calls = []
    original = skip_module.pool_image_states
    monkeypatch.setattr(skip_module, "pool_image_states", lambda *a: calls.append(1) or original(*a))
    x = inputs(ROWS)  # the last two columns stand for two answer tokens
    with adapter.attach(model):
        scored = model(x, layout(ROWS))
        model(x[:, :-2], layout(PROMPTS))  # prefill
        summaries = calls.copy()
        steps = [model.decode(x[:, t].unsqueeze(1)) for t in (-2, -1)]
    for t, step in zip((-2, -1), steps, strict=True):
        for layer in (2, 3):
            torch.testing.assert_close(step[layer][:, 0], scored[layer][:, t], rtol=1e-5, atol=1e-5)
    assert len(calls) == len(summaries), "decode steps must not recompute the image summary"
    if "skip" in features:
        assert len(summaries) == 2  # one per prefill / score forward


def test_next_prefill_replaces_the_summary(standin, layout) -> None:
    model = standin(D)
    adapter = make_adapter(model, skip={"enabled": True, "source_layer": 1})
    with adapter.attach(model):
        model(inputs(PROMPTS, seed=1), layout(PROMPTS))
        first = adapter.skip.summary.clone()
        model(inputs(PROMPTS, seed=2), layout(PROMPTS))
        assert not torch.equal(adapter.skip.summary, first)
    assert adapter.skip.summary is None  # detaching resets


def test_decode_without_prefill_is_an_error(standin, layout) -> None:
    model = standin(D)
    adapter = make_adapter(model, skip={"enabled": True, "source_layer": 1})
    model(inputs(PROMPTS), layout(PROMPTS))  # prefill without the adapter
    with adapter.attach(model), pytest.raises(AdapterError, match="no image summary"):
        model.decode(torch.randn(2, 1, D))


def test_gate_weights_sum_to_one_and_gate_loss(standin, layout) -> None:
    model = standin(D)
    adapter = make_adapter(model, gate={"enabled": True, "num_heads": 3})
    with torch.no_grad():
        for gate in adapter.gates.values():
            gate.proj.weight.normal_()
    target = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    with pytest.raises(AdapterError, match="forward"):
        adapter.gate_loss(target)
    with adapter.attach(model):
        model(inputs(ROWS), layout(ROWS))
        weights = adapter.gate_weights
        assert sorted(weights) == [2, 3]
        for w in weights.values():
            assert w.shape == (2, 3)
            torch.testing.assert_close(w.sum(-1), torch.ones(2))
        loss = adapter.gate_loss(target)  # the target goes with the call
        assert loss.item() > 0
        loss.backward()
        assert all(g.proj.weight.grad.abs().sum() > 0 for g in adapter.gates.values())
    assert make_adapter(model).gate_loss(target) is None  # gate off


def test_forced_gate_weights_pick_one_head(standin, layout) -> None:
    model = standin(D)
    x, lay = inputs(ROWS), layout(ROWS)
    gated = make_adapter(model, gate={"enabled": True, "num_heads": 2})
    randomise(gated)
    single = make_adapter(model)
    for layer in ("2", "3"):
        single.interventions[layer].load_state_dict(gated.interventions[layer].heads[1].state_dict())
    with single.attach(model):
        expected = model(x, lay)[-1]
    with gated.attach(model), gated.use_gate_weights(torch.tensor([[0.0, 1.0], [0.0, 1.0]])):
        got = model(x, lay)[-1]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_half_precision_model_keeps_fp32_adapter(standin, layout) -> None:
    model = standin(D)
    model.layers.to(torch.bfloat16)
    x, lay = inputs(ROWS).to(torch.bfloat16), layout(ROWS)
    base = model(x, lay)[-1]
    adapter = make_adapter(model, skip={"enabled": True, "source_layer": 1})
    with adapter.attach(model):
        assert torch.equal(model(x, lay)[-1], base)
        randomise(adapter)
        out = model(x, lay)[-1]
    assert out.dtype == torch.bfloat16 and not torch.equal(out, base)
    assert all(p.dtype == torch.float32 for p in adapter.parameters())


def test_trainable_parameter_count(standin) -> None:
    model = standin(D)
    d, r, layers = D, 4, 2
    plain = make_adapter(model)
    assert plain.trainable_parameters() == layers * (r * d + r * d + r)  # R, W, b
    skip = make_adapter(model, skip={"enabled": True, "rank": 3})
    assert skip.trainable_parameters() == plain.trainable_parameters() + d * 3 + layers * 3 * r
    gated = make_adapter(model, gate={"enabled": True, "num_heads": 3})
    assert gated.trainable_parameters() == 3 * plain.trainable_parameters() + layers * (d * 3 + 3)


def test_lora_count_peft_agrees_with_shapes(standin) -> None:
    torch.manual_seed(0)
    block = nn.ModuleList(
        nn.ModuleDict({"attn": nn.Linear(8, 24), "out": nn.Linear(24, 8), "norm": nn.LayerNorm(8)})
        for _ in range(3)
    )
    by_hand = 3 * 8 * ((8 + 24) + (24 + 8))
    assert lora_parameter_count_with_peft(block) == by_hand
    assert lora_parameter_count_by_shapes(block) == by_hand
    assert lora_parameter_count(block, rank=4) == by_hand // 2
    assert next(block.parameters()).device.type == "cpu"  # peft worked on a copy
    model = standin(D, num_layers=4)
    assert lora_parameter_count(model) == 4 * 8 * (D + D)


def test_choices_left_to_the_model_are_filled_in_for_it(standin) -> None:
    model = standin(D, num_layers=8)
    adapter = SDRTAdapter.for_model(
        AdapterConfig(skip={"enabled": True}, gate={"enabled": True}), model, num_prompts=5
    )
    assert adapter.config.layers == [4, 5, 6, 7]  # the upper half
    assert (adapter.config.skip.source_layer, adapter.config.gate.num_heads) == (2, 5)
    with pytest.raises(AdapterError, match="heads"):
        SDRTAdapter.for_model(AdapterConfig(gate={"enabled": True}), model)
    with pytest.raises(AdapterError, match="for_model"):
        SDRTAdapter(AdapterConfig(), D)  # an unresolved config never builds modules
