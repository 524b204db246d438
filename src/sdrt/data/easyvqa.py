"""easy-vqa: the installed package's questions about one coloured shape, as records.

It ships its own images and questions, so it is the offline dataset that needs no download.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdrt.data.records import DataError, VQARecord, seeded_subset

EASY_VQA_SPLITS = ("train", "test")


def _easy_vqa() -> Any:
    try:
        import easy_vqa
    except ImportError as exc:
        raise DataError("easy-vqa is not installed: pip install 'sdrt[embedded]' (or easy-vqa==1.0)") from exc
    return easy_vqa


def easy_vqa_answers() -> list[str]:
    """The 13 answers easy-vqa uses (shapes, colours, yes/no)."""
    return list(_easy_vqa().get_answers())


def read_easy_vqa(split: str = "test", limit: int | None = None, seed: int = 0) -> list[VQARecord]:
    """easy-vqa questions of ``split``; ``limit`` takes a seeded random sample, in the original order."""
    if split not in EASY_VQA_SPLITS:
        raise DataError(f"easy-vqa: unknown split {split!r}; known: {EASY_VQA_SPLITS}")
    package = _easy_vqa()
    questions_of: Callable[[], tuple[list[str], list[str], list[int]]] = getattr(
        package, f"get_{split}_questions"
    )
    image_paths: dict[int, str] = getattr(package, f"get_{split}_image_paths")()
    questions, answers, image_ids = questions_of()
    indices = seeded_subset(list(range(len(questions))), limit, seed)
    return [_record(split, i, questions[i], answers[i], image_ids[i], image_paths) for i in indices]


def _record(
    split: str, index: int, question: str, answer: str, image_id: int, image_paths: dict[int, str]
) -> VQARecord:
    record_id = f"easy-vqa/{split}/{index}"
    if image_id not in image_paths:
        raise DataError(f"record {record_id!r}: easy-vqa has no image {image_id} in its {split} split")
    return VQARecord(
        id=record_id,
        question=question,
        answers=[answer],
        image_path=image_paths[image_id],
        task_type="scene",
        metadata={"image_id": image_id, "split": split},
    )
