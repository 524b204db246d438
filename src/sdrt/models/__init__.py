"""Model backends behind one interface (see ``base.py``) and the name -> backend registry."""

from sdrt.models.base import (
    EncodedImage,
    Generation,
    ModelError,
    ScoreOutput,
    TokenLayout,
    VisionLanguageModel,
)
from sdrt.models.registry import available_models, load_model

__all__ = [
    "EncodedImage",
    "Generation",
    "ModelError",
    "ScoreOutput",
    "TokenLayout",
    "VisionLanguageModel",
    "available_models",
    "load_model",
]
