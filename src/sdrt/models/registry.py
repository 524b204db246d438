"""Model names users type (``embedded``, ``tiny:llava``, a folder, a hub id) -> a loaded backend.

``embedded:<folder>`` is the embedded model with the weights of an alignment run other than
the shipped ones (``sdrt align`` writes them to ``<out>/weights``), so candidate weights are
traced, distilled and scored by the same commands before they replace the shipped ones.
"""

from __future__ import annotations

from pathlib import Path

from sdrt.config import DType, LoadOptions
from sdrt.models.base import ModelError, VisionLanguageModel

__all__ = ["TINY_FAMILIES", "LoadOptions", "available_models", "load_model"]

TINY_FAMILIES = ("llava", "qwen2-vl", "idefics3")


def available_models() -> list[str]:
    return [
        "embedded",
        "embedded:<weights folder>",
        *(f"tiny:{family}" for family in TINY_FAMILIES),
        "<local folder>",
        "<hub id>",
    ]


def load_model(
    name: str,
    options: LoadOptions | None = None,
    *,
    device: str | None = None,
    dtype: DType | None = None,
) -> VisionLanguageModel:
    """Load a backend by name. Unknown names raise ``ModelError`` listing what is known.

    ``device`` and ``dtype`` are shorthands that override the same fields of ``options``.
    """
    options = (options or LoadOptions()).model_copy(
        update={k: v for k, v in {"device": device, "dtype": dtype}.items() if v is not None}
    )
    if name == "embedded" or name.startswith("embedded:"):
        return _load_embedded(name, options)
    from sdrt.models.hf import HFVisionLanguageModel

    if name.startswith("tiny:"):
        family = name.removeprefix("tiny:")
        if family not in TINY_FAMILIES:
            raise ModelError(f"unknown tiny model {name!r}; known: {', '.join(TINY_FAMILIES)}")
        from sdrt.models.tiny import tiny_model_path

        model = HFVisionLanguageModel.from_pretrained(str(tiny_model_path(family)), options)
        model.name = name
        return model
    path = Path(name).expanduser()
    if path.exists():
        return HFVisionLanguageModel.from_pretrained(str(path), options)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return HFVisionLanguageModel.from_pretrained(name, options)
    raise ModelError(
        f"unknown model {name!r}: not a folder, not a hub id; known names: {', '.join(available_models())}"
    )


def _load_embedded(name: str, options: LoadOptions) -> VisionLanguageModel:
    """``embedded`` (the shipped weights) or ``embedded:<folder>`` (an alignment run's weights)."""
    import torch

    from sdrt.models.embedded import WEIGHTS_FILE, EmbeddedVLM

    if options.dtype == "float16" or options.device_map or options.attn_implementation:
        raise ModelError(
            "the embedded model runs in float32 or bfloat16 on one device; "
            "drop --device-map/--attn and use --dtype float32|bfloat16"
        )
    folder = name.partition(":")[2] or None
    if folder is not None and not (Path(folder).expanduser() / WEIGHTS_FILE).is_file():
        raise ModelError(
            f"{name}: no embedded weights in {folder} (expected {WEIGHTS_FILE}, as sdrt align writes)"
        )
    model = EmbeddedVLM.load(
        device=options.device,
        dtype=getattr(torch, options.dtype),
        weights_dir=Path(folder).expanduser() if folder else None,
    )
    model.name = name
    return model
