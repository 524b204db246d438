"""Model names users type (``embedded``, ``tiny:llava``, a folder, a hub id) -> a loaded backend."""

from __future__ import annotations

from pathlib import Path

from sdrt.models.base import ModelError, VisionLanguageModel

TINY_FAMILIES = ("llava", "qwen2-vl", "idefics3")


def available_models() -> list[str]:
    return ["embedded", *(f"tiny:{family}" for family in TINY_FAMILIES), "<local folder>", "<hub id>"]


def load_model(name: str, *, device: str = "cpu", dtype: str = "float32") -> VisionLanguageModel:
    """Load a backend by name. Unknown names raise ``ModelError`` listing what is known."""
    if name == "embedded":
        from sdrt.models.embedded import EmbeddedVLM

        return EmbeddedVLM.load(device=device)
    if name.startswith("tiny:"):
        family = name.removeprefix("tiny:")
        if family not in TINY_FAMILIES:
            raise ModelError(f"unknown tiny model {name!r}; known: {', '.join(TINY_FAMILIES)}")
        from sdrt.models.tiny import load_tiny_model

        return load_tiny_model(family, device=device)
    from sdrt.models.hf import HFVisionLanguageModel

    path = Path(name).expanduser()
    if path.exists():
        return HFVisionLanguageModel.from_pretrained(str(path), device=device, dtype=dtype)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return HFVisionLanguageModel.from_pretrained(name, device=device, dtype=dtype)
    raise ModelError(
        f"unknown model {name!r}: not a folder, not a hub id; known names: {', '.join(available_models())}"
    )
