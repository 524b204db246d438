"""Back-patching: a later layer's states of the question, fed back at an earlier layer."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sdrt.adapters.backpatch import rms_normalised
from sdrt.adapters.config import AdapterConfig
from sdrt.adapters.model import SDRTAdapter
from sdrt.models.base import ModelError, TokenLayout

D = 16
ROWS = ["..iittttaa", "iitttttaaa"]


def inputs(rows: list[str]) -> torch.Tensor:
    return torch.randn(len(rows), len(rows[0]), D, generator=torch.Generator().manual_seed(0))


def patch_adapter(model, target: int = 0, source: int = 2, positions=("last_prompt:2",)) -> SDRTAdapter:
    config = AdapterConfig(
        layers=[1, 3],
        rank=2,
        positions=["answer"],
        back_patch={
            "enabled": True,
            "target_layer": target,
            "source_layer": source,
            "rank": 3,
            "positions": list(positions),
        },
    )
    return SDRTAdapter.for_model(config, model)


def randomised(adapter: SDRTAdapter) -> SDRTAdapter:
    with torch.no_grad():
        up = adapter.back_patch.up.weight
        up.copy_(torch.randn(up.shape, generator=torch.Generator().manual_seed(2)))
    return adapter


def test_the_patch_is_what_the_frozen_later_layers_make_of_the_target(standin, layout) -> None:
    """At layer 0 the last two prompt positions get ``U D rms(h_2)`` of the bare model; nothing else moves."""
    model = standin(D)
    x, lay = inputs(ROWS), layout(ROWS)
    base = model(x, lay)
    adapter = randomised(patch_adapter(model))
    with adapter.attach(model), torch.no_grad():
        edited = model(x, lay)
    mask = lay.last_prompt_positions(2).bool()
    expected = base[0].clone()
    expected[mask] += adapter.back_patch(base[2][mask])
    torch.testing.assert_close(edited[0], expected)
    assert torch.equal(edited[0][~mask], base[0][~mask])


def test_a_fresh_back_patch_is_the_identity_and_learns(standin, layout, identity_then_learns) -> None:
    model = standin(D)
    lay = layout(ROWS)
    read = lay.last_prompt_positions(2)
    adapter = identity_then_learns(model, patch_adapter(model), inputs(ROWS), lay, read)
    assert adapter.back_patch.up.weight.grad.abs().sum() > 0


def test_decode_steps_are_not_patched(standin, layout, decode_untouched) -> None:
    model = standin(D)
    decode_untouched(model, randomised(patch_adapter(model)), inputs(ROWS), layout(ROWS))


def test_config_checks_the_layers_and_positions(standin) -> None:
    with pytest.raises(ValueError, match="must be above target_layer"):
        AdapterConfig(layers=[2], back_patch={"enabled": True, "target_layer": 2, "source_layer": 2})
    with pytest.raises(ValueError, match="prompt positions"):
        AdapterConfig(layers=[2], back_patch={"enabled": True, "positions": ["answer"]})
    with pytest.raises(Exception, match=r"back_patch.source_layer 9 out of range"):
        config = AdapterConfig(layers=[1], back_patch={"enabled": True, "source_layer": 9})
        SDRTAdapter.for_model(config, standin(D))
    resolved = AdapterConfig(layers=[6, 10], back_patch={"enabled": True}).resolved(30)
    assert (resolved.back_patch.target_layer, resolved.back_patch.source_layer) == (6, 21)
    with pytest.raises(ModelError, match="cannot rerun"):
        standin(D).add_rerun_hook(2, 2, lambda *args: None)


def test_saved_and_loaded_with_its_weights(standin, layout, tmp_path, round_trip) -> None:
    model = standin(D)
    adapter = randomised(patch_adapter(model))
    loaded = round_trip(model, adapter, inputs(ROWS), layout(ROWS), tmp_path)
    assert loaded.config.back_patch == adapter.config.back_patch


def test_rms_normalised_has_unit_root_mean_square() -> None:
    x = torch.randn(5, D) * 40
    torch.testing.assert_close(rms_normalised(x).pow(2).mean(-1), torch.ones(5), rtol=1e-4, atol=1e-4)


# --- on real (tiny, random) transformers VLMs: masks, rotary positions, the KV cache ---------

PROMPTS = ["What colour is it?", "Count the things in this picture, then say how many there are."]


@pytest.fixture(scope="module", params=["llava", "qwen2-vl"])
def tiny(request):
    from sdrt.models.tiny import load_tiny_model

    model = load_tiny_model(request.param)
    images = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    return model, images


def test_rerun_gives_the_frozen_later_layer_of_the_same_forward(tiny) -> None:
    """``later()`` at layer 0 equals layer 1's own output: same masks, rotary positions, no cache."""
    model, images = tiny
    seen: list[torch.Tensor] = []

    def record(layer: int, hidden: torch.Tensor, layout: TokenLayout, later) -> None:
        seen.append(later())

    with torch.no_grad(), model.add_rerun_hook(0, 1, record):
        out = model.score(images, PROMPTS, ["red", "three"], layers=[1])
    real = out.layout.attention_mask.bool()
    torch.testing.assert_close(seen[0][real], out.hidden_states[1][real], rtol=1e-5, atol=1e-5)


def test_generation_with_a_patch_matches_its_teacher_forced_score(tiny, decode_matches_score) -> None:
    """A KV-cached generate gives its first token (prefill) and second (a decode step) the
    log-probs a score of them gives: the rerun writes nothing into the cache, and decode steps
    see what training sees."""
    model, images = tiny
    patch = {
        "enabled": True,
        "target_layer": 0,
        "source_layer": 1,
        "positions": ["first_prompt:4", "last_prompt:3"],
    }
    config = AdapterConfig(layers=[1], rank=2, positions=["answer"], back_patch=patch)
    torch.manual_seed(0)  # the down-projection's initial weights, so the tokens checked are fixed
    adapter = randomised(SDRTAdapter.for_model(config, model))
    with torch.no_grad():
        plain = [g.token_ids for g in model.generate(images, PROMPTS, max_new_tokens=2)]
        with adapter.attached(model):
            gens = model.generate(images, PROMPTS, max_new_tokens=2)
            assert decode_matches_score(model, images, PROMPTS, gens)  # at least one row checked
    assert [g.token_ids for g in gens] != plain  # the patch acts in generation
