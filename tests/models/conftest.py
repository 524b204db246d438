"""Shared fixtures: the tiny offline VLMs (built once per test session) and small images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

FAMILIES = ("llava", "qwen2-vl", "idefics3")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh model cache, so the tests exercise the build and never touch the user's cache."""
    cache = tmp_path_factory.mktemp("sdrt-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDRT_CACHE", str(cache))
        yield cache


_models: dict[str, object] = {}


@pytest.fixture(params=FAMILIES)
def tiny_model(request: pytest.FixtureRequest, tiny_cache: Path):
    """Each tiny family in turn, loaded once per session through the real loading path."""
    from sdrt.models.tiny import load_tiny_model

    family = request.param
    if family not in _models:
        _models[family] = load_tiny_model(family)
    return _models[family]


def _picture(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", size, (240, 240, 240))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w // 8, h // 8, w // 2, h // 2), fill=colour)
    draw.rectangle((w // 2, h // 2, w - 4, h - 4), fill=(20, 20, 160))
    return image


@pytest.fixture
def image() -> Image.Image:
    return _picture((64, 64), (200, 30, 30))


@pytest.fixture
def other_image() -> Image.Image:
    """A different size and aspect ratio, so families that count image tokens by size differ."""
    return _picture((48, 40), (30, 160, 30))
