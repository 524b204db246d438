"""The adapter on a real (tiny, random) transformers VLM through the model interface."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image

from sdrt.adapters.config import AdapterConfig
from sdrt.adapters.files import load_adapter, save_adapter
from sdrt.adapters.model import SDRTAdapter, lora_parameter_count_by_shapes, lora_parameter_count_with_peft

if importlib.util.find_spec("sdrt.models.tiny") is None:
    pytest.skip("sdrt.models.tiny (tiny transformers VLMs) is not available", allow_module_level=True)

PROMPTS = ["What colour is it?", "Count the things in this picture, then say how many there are."]
ANSWERS = ["red", "three"]


@pytest.fixture(scope="module")
def tiny():
    from sdrt.models.tiny import load_tiny_model

    model = load_tiny_model("llava")
    images = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    return model, images


def make_adapter(model, randomise: bool) -> SDRTAdapter:
    config = AdapterConfig(
        layers=[model.num_layers - 1],
        rank=4,
        positions=["last_prompt:3", "answer"],
        skip={"enabled": True, "source_layer": 0},
        gate={"enabled": True, "num_heads": 2},
    )
    adapter = SDRTAdapter.for_model(config, model)
    if randomise:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in adapter.named_parameters():
                if "source" in name or "skip.up" in name or "gates" in name:
                    p.add_(torch.randn(p.shape, generator=gen) * 4)
    return adapter


def answer_logits(model, images, prompts=PROMPTS, answers=ANSWERS) -> torch.Tensor:
    with torch.no_grad():
        return model.score(images, prompts, answers).answer_logits


def test_fresh_adapter_changes_nothing(tiny) -> None:
    model, images = tiny
    base = answer_logits(model, images)
    base_ids = [g.token_ids for g in model.generate(images, PROMPTS, max_new_tokens=4)]
    with make_adapter(model, randomise=False).attached(model):
        assert torch.equal(answer_logits(model, images), base)
        assert [g.token_ids for g in model.generate(images, PROMPTS, max_new_tokens=4)] == base_ids


def test_trained_adapter_edits_and_follows_left_padding(tiny) -> None:
    model, images = tiny
    base = answer_logits(model, images)
    with make_adapter(model, randomise=True).attached(model):
        batch = answer_logits(model, images)
        alone = answer_logits(model, images[:1], PROMPTS[:1], ANSWERS[:1])
    assert not torch.allclose(batch, base)
    width = alone.shape[1]
    torch.testing.assert_close(batch[:1, :width], alone, rtol=1e-4, atol=1e-5)


def test_decode_steps_match_teacher_forced_score(tiny, decode_matches_score) -> None:
    """The second generated token's log-prob (a decode step) equals the score of that token."""
    model, images = tiny
    with make_adapter(model, randomise=True).attached(model), torch.no_grad():
        gens = model.generate(images, PROMPTS, max_new_tokens=2)
        checked = decode_matches_score(model, images, PROMPTS, gens)
    if not checked:
        pytest.skip("no generated first token re-tokenises to itself")


def test_round_trip_on_tiny_model(tiny, tmp_path) -> None:
    model, images = tiny
    adapter = make_adapter(model, randomise=True)
    with adapter.attached(model):
        before = answer_logits(model, images)
    save_adapter(adapter, tmp_path)
    with load_adapter(tmp_path, model).attached(model):
        assert torch.equal(answer_logits(model, images), before)


def test_lora_count_on_the_language_model(tiny) -> None:
    model, _ = tiny
    with_peft = lora_parameter_count_with_peft(model.decoder_layers)
    assert with_peft == lora_parameter_count_by_shapes(model.decoder_layers) > 0
    assert make_adapter(model, randomise=False).trainable_parameters() < with_peft
