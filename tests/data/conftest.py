"""Small images made on the spot, so that data tests need no files from anywhere."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image


def _png_bytes(rgb: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def png_bytes() -> Callable[..., bytes]:
    return _png_bytes


@pytest.fixture
def write_png(tmp_path: Path) -> Callable[[str, tuple[int, int, int]], Path]:
    def write(name: str, rgb: tuple[int, int, int]) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png_bytes(rgb))
        return path

    return write
