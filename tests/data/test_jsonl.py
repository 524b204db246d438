from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sdrt.data import DataError, SkipReport, read_jsonl


def _write_lines(path: Path, lines: list[str | dict]) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _good(record_id: str, image: str = "img/a.png", **extra) -> dict:
    return {"id": record_id, "image": image, "question": f"question {record_id}?", **extra}


@pytest.fixture
def images(write_png):
    write_png("img/a.png", (255, 0, 0))
    write_png("img/b.png", (0, 0, 255))


def test_good_file(tmp_path, images):
    path = _write_lines(
        tmp_path / "set.jsonl",
        [
            _good("q1", answers=["red", "Red"], task_type="document", metadata={"page": 2}),
            "",  # blank lines are allowed
            _good("q2", image="img/b.png", answers="blue"),
            _good("q3", choices=["cat", "dog"], answer_index=1, task_type="multiple-choice"),
            _good("q4"),  # no answers: fine for label-free training
        ],
    )
    records = read_jsonl(path)
    assert [r.id for r in records] == ["q1", "q2", "q3", "q4"]
    q1, q2, q3, q4 = records
    assert q1.answers == ["red", "Red"] and q1.task_type == "document" and q1.metadata == {"page": 2}
    assert q2.answers == ["blue"] and q2.task_type == "scene"
    assert q3.choices == ["cat", "dog"] and q3.answer_index == 1 and q3.answers == ["dog"]
    assert q4.answers == []
    assert Path(q1.image_path) == tmp_path / "img" / "a.png"  # relative to the file's folder
    assert q2.load_image().getpixel((0, 0)) == (0, 0, 255)


BAD_LINES = {
    "malformed": ('{"id": "x", "image": ', "malformed JSON"),
    "missing field": ({"id": "x", "image": "img/a.png"}, r"missing field.*question"),
    "missing image": (_good("x", image="img/none.png"), r"image file not found.*none\.png"),
    "empty question": ({"id": "x", "image": "img/a.png", "question": "  "}, "empty question"),
    "not an object": ("[1, 2]", "JSON object"),
    "bad answers": (_good("x", answers=[1, 2]), "answers"),
    "bad task type": (_good("x", task_type="poetry"), "task type"),
    "index outside choices": (_good("x", choices=["a"], answer_index=3), "answer index"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_names_file_and_line(tmp_path, images, case):
    line, message = BAD_LINES[case]
    path = _write_lines(tmp_path / "bad.jsonl", [_good("ok"), line])
    with pytest.raises(DataError, match=rf"bad\.jsonl line 2: .*{message}"):
        read_jsonl(path)


def test_duplicate_ids_are_bad(tmp_path, images):
    path = _write_lines(tmp_path / "dup.jsonl", [_good("same"), _good("same")])
    with pytest.raises(DataError, match=r"line 2: duplicate id"):
        read_jsonl(path)


def test_skip_bad_counts_and_logs_each_skip(tmp_path, images, caplog):
    lines = [_good("g1"), *(line for line, _ in BAD_LINES.values()), _good("g2", image="img/b.png")]
    path = _write_lines(tmp_path / "mixed.jsonl", lines)
    skips = SkipReport()
    with caplog.at_level(logging.WARNING, logger="sdrt.data"):
        records = read_jsonl(path, skip_bad=True, skips=skips)
    assert [r.id for r in records] == ["g1", "g2"]
    assert skips.count == len(BAD_LINES)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(BAD_LINES)
    assert all("mixed.jsonl line" in w.getMessage() for w in warnings)
    assert str(len(BAD_LINES)) in skips.summary()


def test_corrupt_image_is_found_when_loaded(tmp_path, images):
    (tmp_path / "img" / "corrupt.png").write_bytes(b"not an image")
    path = _write_lines(tmp_path / "c.jsonl", [_good("c1", image="img/corrupt.png")])
    record = read_jsonl(path)[0]  # existence is checked at read time, decoding is not
    with pytest.raises(DataError, match=r"'c1'.*corrupt\.png"):
        record.load_image()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")
