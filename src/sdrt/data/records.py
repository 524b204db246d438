"""The one record type every reader yields and every later stage consumes."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from PIL import Image, UnidentifiedImageError

TaskType = Literal["document", "chart", "scene", "text-in-image", "knowledge", "multiple-choice"]
TASK_TYPES: tuple[str, ...] = ("document", "chart", "scene", "text-in-image", "knowledge", "multiple-choice")

T = TypeVar("T")


class DataError(ValueError):
    """Bad input data; the message names the record or file at fault."""


@dataclass
class VQARecord:
    """One visual question.

    The image is a path (read lazily), encoded bytes (embedded in Parquet; decoded lazily, so a
    large benchmark costs its compressed size in memory) or an in-memory image (generated scenes).
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
    image_bytes: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.question or not self.question.strip():
            raise DataError(f"record {self.id!r}: empty question")
        if self.image is None and not self.image_path and not self.image_bytes:
            raise DataError(f"record {self.id!r}: no image, no image bytes and no image path")
        if self.task_type not in TASK_TYPES:
            raise DataError(f"record {self.id!r}: unknown task type {self.task_type!r}; known: {TASK_TYPES}")
        if (
            self.choices is not None
            and self.answer_index is not None
            and not (0 <= self.answer_index < len(self.choices))
        ):
            raise DataError(f"record {self.id!r}: answer index {self.answer_index} outside its choices")

    def load_image(self) -> Image.Image:
        """The image as RGB; a missing or corrupt file (or bytes) raises ``DataError`` naming the record."""
        if self.image is not None:
            return self.image.convert("RGB")
        if self.image_bytes:
            return self._decode_bytes()
        path = Path(self.image_path or "")
        if not path.is_file():
            raise DataError(f"record {self.id!r}: image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"record {self.id!r}: cannot read image {path}: {exc}") from exc

    def _decode_bytes(self) -> Image.Image:
        try:
            with Image.open(io.BytesIO(self.image_bytes or b"")) as img:
                img.load()
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            name = self.metadata.get("image_name")
            where = f" ({name})" if name else ""
            raise DataError(f"record {self.id!r}: cannot decode embedded image{where}: {exc}") from exc


def seeded_subset(items: list[T], limit: int | None, seed: int) -> list[T]:
    """A reproducible random sample kept in the original order (a first-N cut would bias by file order)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
