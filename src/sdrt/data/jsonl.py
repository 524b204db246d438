"""Our own JSONL format: one question per line, images beside the file.

Each line is an object with ``id``, ``image`` (a path, relative to the JSONL file's folder unless
absolute) and ``question``; optional ``answers`` (a list, or one string), ``choices``,
``answer_index``, ``task_type`` (default "scene") and ``metadata``. Answers are optional because
SDRT trains without labels. Image files must exist at read time; a corrupt one is only found when
``VQARecord.load_image`` decodes it, so that reading a large file stays cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdrt.data.records import DataError, VQARecord
from sdrt.data.skips import SkipReport, fail_or_skip

REQUIRED_FIELDS = ("id", "image", "question")


def read_jsonl(
    path: str | Path, skip_bad: bool = False, *, skips: SkipReport | None = None
) -> list[VQARecord]:
    """Records of a JSONL file; bad lines raise ``DataError`` naming file and line, or are skipped.

    With ``skip_bad=True`` each bad line is logged and counted in ``skips`` (pass your own
    ``SkipReport`` to read the count).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    skips = skips if skips is not None else SkipReport()
    records: list[VQARecord] = []
    seen_ids: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = _parse_line(line, path.parent)
                if record.id in seen_ids:
                    raise DataError(f"duplicate id {record.id!r}")
            except DataError as exc:
                fail_or_skip(where, str(exc), skip_bad=skip_bad, skips=skips)
                continue
            seen_ids.add(record.id)
            records.append(record)
    return records


def _parse_line(line: str, folder: Path) -> VQARecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in obj]
    if missing:
        raise DataError(f"missing field(s) {missing}")
    record_id = _text(obj, "id")
    image_path = _image_path(_text(obj, "image"), folder)
    choices = _optional_str_list(obj, "choices")
    answer_index = obj.get("answer_index")
    if answer_index is not None and (isinstance(answer_index, bool) or not isinstance(answer_index, int)):
        raise DataError(f"record {record_id!r}: answer_index must be an integer, got {answer_index!r}")
    answers = _answers(obj)
    if not answers and choices is not None and answer_index is not None and 0 <= answer_index < len(choices):
        answers = [choices[answer_index]]
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise DataError(f"record {record_id!r}: metadata must be an object")
    return VQARecord(
        id=record_id,
        question=_text(obj, "question"),
        answers=answers,
        image_path=str(image_path),
        choices=choices,
        answer_index=answer_index,
        task_type=obj.get("task_type", "scene"),
        metadata=dict(metadata),
    )


def _text(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if isinstance(value, int) and not isinstance(value, bool) and name == "id":
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"empty {name}")
    return value


def _image_path(image: str, folder: Path) -> Path:
    path = Path(image)
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    return path


def _answers(obj: dict[str, Any]) -> list[str]:
    answers = obj.get("answers", [])
    if isinstance(answers, str):
        return [answers]
    return _optional_str_list(obj, "answers") or []


def _optional_str_list(obj: dict[str, Any], name: str) -> list[str] | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataError(f"field {name!r} must be a list of strings")
    return list(value)
