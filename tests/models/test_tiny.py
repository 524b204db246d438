"""Building, caching and loading the tiny offline VLMs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdrt.models import tiny
from sdrt.models.base import ModelError
from sdrt.models.hf import HFVisionLanguageModel
from sdrt.models.registry import TINY_FAMILIES, load_model


def test_every_registry_family_has_a_builder():
    assert set(TINY_FAMILIES) == set(tiny.TINY_FAMILIES)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_same_call_builds_the_same_weights(family: str, tmp_path: Path):
    first = load_file(tiny.build_tiny_model(family, tmp_path / "a") / "model.safetensors")
    second = load_file(tiny.build_tiny_model(family, tmp_path / "b") / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tokenizer_round_trips_text_and_knows_the_image_token(family: str):
    tok = tiny.build_tokenizer(family)
    text = "Größe: 3 × 4 = 12 — ok? 日本"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.convert_ids_to_tokens(tok.image_token_id) == tok.image_token
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None and tok.eos_token_id is not None


def test_load_builds_once_then_reuses_the_cache(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch):
    model = load_model("tiny:llava")
    assert isinstance(model, HFVisionLanguageModel)
    assert model.name == "tiny:llava"
    assert tiny.tiny_model_path("llava") == tiny_cache / "tiny" / "llava"

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(tiny, "build_tiny_model", refuse)
    assert tiny.load_tiny_model("llava").config_hash == model.config_hash
    assert not [p.name for p in (tiny_cache / "tiny").iterdir() if p.name.startswith(".")]


def test_interrupted_build_leaves_no_model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SDRT_CACHE", str(tmp_path))

    def half_build(family: str, out_dir: Path) -> Path:
        (Path(out_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "build_tiny_model", half_build)
    with pytest.raises(KeyboardInterrupt):
        tiny.tiny_model_path("qwen2-vl")
    assert list((tmp_path / "tiny").iterdir()) == []


def test_unknown_family_raises():
    with pytest.raises(ModelError, match="unknown tiny model family 'foo'"):
        tiny.build_tiny_model("foo", "/nonexistent")
    with pytest.raises(ModelError, match="known: llava"):
        tiny.load_tiny_model("foo")
