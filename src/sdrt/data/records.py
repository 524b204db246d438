"""The one record type every reader yields and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

TaskType = Literal["document", "chart", "scene", "text-in-image", "knowledge", "multiple-choice"]
TASK_TYPES: tuple[str, ...] = ("document", "chart", "scene", "text-in-image", "knowledge", "multiple-choice")


class DataError(ValueError):
    """Bad input data; the message names the record or file at fault."""


@dataclass
class VQARecord:
    """One visual question.

    The image is either a path (read lazily) or an in-memory image (generated scenes).
    ``answers`` may be empty: SDRT needs no labels to train, only to evaluate.
    """

    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    image_path: str | None = None
    image: Image.Image | None = field(default=None, repr=False)
    choices: list[str] | None = None
    answer_index: int | None = None
    task_type: str = "scene"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.question or not self.question.strip():
            raise DataError(f"record {self.id!r}: empty question")
        if self.image is None and not self.image_path:
            raise DataError(f"record {self.id!r}: no image and no image path")
        if self.task_type not in TASK_TYPES:
            raise DataError(f"record {self.id!r}: unknown task type {self.task_type!r}; known: {TASK_TYPES}")
        if self.choices is not None and self.answer_index is not None and not (
            0 <= self.answer_index < len(self.choices)
        ):
            raise DataError(f"record {self.id!r}: answer index {self.answer_index} outside its choices")

    def load_image(self) -> Image.Image:
        """The image as RGB; a missing or corrupt file raises ``DataError`` naming the record."""
        if self.image is not None:
            return self.image.convert("RGB")
        path = Path(self.image_path or "")
        if not path.is_file():
            raise DataError(f"record {self.id!r}: image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"record {self.id!r}: cannot read image {path}: {exc}") from exc
