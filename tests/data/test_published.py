"""Each published layout on a tiny Parquet file written here in that layout's columns."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdrt.data import DataError, SkipReport, detect_layout, read_published

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
COLOURS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]


def _image(png_bytes, row: int) -> dict:
    return {"bytes": png_bytes(COLOURS[row % len(COLOURS)]), "path": f"img_{row}.png"}


def _docvqa(png_bytes, n: int) -> pa.Table:
    return pa.table(
        {
            "questionId": pa.array([str(1000 + i) for i in range(n)]),
            "question": pa.array([f"What is the date on page {i}?" for i in range(n)]),
            "question_types": pa.array([["form"]] * n, pa.list_(pa.string())),
            "image": pa.array([_image(png_bytes, i) for i in range(n)], IMAGE),
            "docId": pa.array(list(range(n)), pa.int64()),
            "ucsf_document_id": pa.array([f"doc{i}" for i in range(n)]),
            "ucsf_document_page_no": pa.array(["1"] * n),
            "answers": pa.array([[f"{i} May", f"May {i}"] for i in range(n)], pa.list_(pa.string())),
            "data_split": pa.array(["val"] * n),
        }
    )


def _infovqa(png_bytes, n: int) -> pa.Table:
    return pa.table(
        {
            "questionId": pa.array([str(2000 + i) for i in range(n)]),
            "question": pa.array([f"How many people in region {i}?" for i in range(n)]),
            "answers": pa.array([[str(10 * i)] for i in range(n)], pa.list_(pa.string())),
            "answer_type": pa.array([["single span"]] * n, pa.list_(pa.string())),
            "image": pa.array([_image(png_bytes, i) for i in range(n)], IMAGE),
            "image_url": pa.array([f"http://example.org/{i}.png" for i in range(n)]),
            "operation/reasoning": pa.array([["counting"]] * n, pa.list_(pa.string())),
            "ocr": pa.array(["{}"] * n),
            "data_split": pa.array(["val"] * n),
        }
    )


def _chartqa(png_bytes, n: int) -> pa.Table:
    return pa.table(
        {
            "type": pa.array(["human_test"] * n),
            "question": pa.array([f"What is the value of bar {i}?" for i in range(n)]),
            "answer": pa.array([str(i * 1.5) for i in range(n)]),
            "image": pa.array([_image(png_bytes, i) for i in range(n)], IMAGE),
        }
    )


def _textvqa(png_bytes, n: int) -> pa.Table:
    return pa.table(
        {
            "image_id": pa.array([f"im{i}" for i in range(n)]),
            "question_id": pa.array(list(range(3000, 3000 + n)), pa.int32()),
            "question": pa.array([f"What brand is shown {i}?" for i in range(n)]),
            "question_tokens": pa.array([["what", "brand"]] * n, pa.list_(pa.string())),
            "image": pa.array([_image(png_bytes, i) for i in range(n)], IMAGE),
            "image_width": pa.array([8] * n, pa.int32()),
            "image_height": pa.array([6] * n, pa.int32()),
            "flickr_original_url": pa.array(["u"] * n),
            "flickr_300k_url": pa.array(["u"] * n),
            "answers": pa.array([["nike"] * 7 + ["adidas"] * 3 for _ in range(n)], pa.list_(pa.string())),
            "image_classes": pa.array([["shoe"]] * n, pa.list_(pa.string())),
            "set_name": pa.array(["val"] * n),
            "ocr_tokens": pa.array([["nike"]] * n, pa.list_(pa.string())),
        }
    )


def _scienceqa(png_bytes, n: int) -> pa.Table:
    images = [None if i % 3 == 2 else _image(png_bytes, i) for i in range(n)]  # every third is text-only
    return pa.table(
        {
            "image": pa.array(images, IMAGE),
            "question": pa.array([f"Which animal is shown {i}?" for i in range(n)]),
            "choices": pa.array([["cat", "dog", "owl"]] * n, pa.list_(pa.string())),
            "answer": pa.array([i % 3 for i in range(n)], pa.int8()),
            **{
                name: pa.array([f"{name} {i}" for i in range(n)])
                for name in ("hint", "task", "grade", "subject", "topic", "category", "skill")
            },
            "lecture": pa.array(["lecture"] * n),
            "solution": pa.array(["solution"] * n),
        }
    )


BUILDERS = {
    "docvqa": _docvqa,
    "infovqa": _infovqa,
    "chartqa": _chartqa,
    "textvqa": _textvqa,
    "scienceqa": _scienceqa,
}
TASK_TYPES = {
    "docvqa": "document",
    "infovqa": "document",
    "chartqa": "chart",
    "textvqa": "text-in-image",
    "scienceqa": "multiple-choice",
}


def _expected_answers(layout: str, table: pa.Table, row: int) -> list[str]:
    values = table.slice(row, 1).to_pylist()[0]
    if layout == "chartqa":
        return [values["answer"]]
    if layout == "scienceqa":
        return [values["choices"][values["answer"]]]
    return values["answers"]


def _write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_each_layout_maps_to_records(tmp_path, png_bytes, layout):
    table = BUILDERS[layout](png_bytes, 6)
    path = _write(table, tmp_path / layout / "validation-00000-of-00001.parquet")
    records = read_published(path, layout)
    image_rows = [i for i in range(6) if table["image"][i].is_valid]
    assert len(records) == len(image_rows)
    assert len({r.id for r in records}) == len(records)
    for record, row in zip(records, image_rows, strict=True):
        assert record.id.startswith(f"{layout}/")
        assert record.task_type == TASK_TYPES[layout]
        assert record.question == table["question"][row].as_py()
        assert record.answers == _expected_answers(layout, table, row)
        assert record.metadata["dataset"] == layout and record.metadata["split"] == "validation"
        assert record.image is None and record.image_bytes  # kept encoded until needed
        assert record.image_path is None and record.metadata["image_name"] == f"img_{row}.png"
        assert record.load_image().getpixel((1, 1)) == COLOURS[row % len(COLOURS)]


def test_layout_specific_fields(tmp_path, png_bytes):
    textvqa = read_published(_write(_textvqa(png_bytes, 2), tmp_path / "t.parquet"), "textvqa")
    assert textvqa[1].id == "textvqa/3001"
    assert textvqa[1].answers.count("nike") == 7  # duplicates matter to VQA accuracy
    assert textvqa[1].metadata["ocr_tokens"] == ["nike"]
    docvqa = read_published(_write(_docvqa(png_bytes, 2), tmp_path / "d.parquet"), "DocVQA")
    assert docvqa[0].id == "docvqa/1000" and docvqa[0].metadata["question_types"] == ["form"]
    science = read_published(_write(_scienceqa(png_bytes, 2), tmp_path / "s.parquet"), "scienceqa")
    assert science[1].choices == ["cat", "dog", "owl"] and science[1].answer_index == 1
    assert science[1].metadata["hint"] == "hint 1"
    info = read_published(_write(_infovqa(png_bytes, 1), tmp_path / "i.parquet"), "InfographicVQA")
    assert "ocr" not in info[0].metadata  # large, and no prompt of ours reads it


def test_scienceqa_rows_without_image_are_counted_not_errors(tmp_path, png_bytes, caplog):
    path = _write(_scienceqa(png_bytes, 9), tmp_path / "test-00000-of-00001.parquet")
    skips = SkipReport()
    with caplog.at_level(logging.INFO, logger="sdrt.data"):
        records = read_published(path, "scienceqa", skips=skips)
    assert len(records) == 6 and skips.count == 3
    assert skips.by_reason() == {"no image": 3}
    assert [r.id for r in records][:3] == ["scienceqa/test/0", "scienceqa/test/1", "scienceqa/test/3"]
    assert sum("no image" in r.getMessage() for r in caplog.records) == 3


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_missing_column_names_file_and_column(tmp_path, png_bytes, layout):
    table = BUILDERS[layout](png_bytes, 2).drop_columns(["question"])
    path = _write(table, tmp_path / "broken.parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: missing column.*'question'"):
        read_published(path, layout)


def test_bad_row_names_file_and_row_or_is_skipped(tmp_path, png_bytes, caplog):
    table = _chartqa(png_bytes, 4)
    questions = table["question"].to_pylist()
    questions[2] = " "
    table = table.set_column(1, "question", pa.array(questions))
    path = _write(table, tmp_path / "test-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"test-00000-of-00001\.parquet row 2: .*empty question"):
        read_published(path, "chartqa")
    skips = SkipReport()
    with caplog.at_level(logging.WARNING, logger="sdrt.data"):
        records = read_published(path, "chartqa", skip_bad=True, skips=skips)
    assert [r.id for r in records] == ["chartqa/test/0", "chartqa/test/1", "chartqa/test/3"]
    assert skips.count == 1 and len(caplog.records) == 1


def test_folder_of_shards_and_splits(tmp_path, png_bytes):
    folder = tmp_path / "ChartQA"
    table = _chartqa(png_bytes, 6)
    _write(table.slice(0, 4), folder / "data" / "test-00000-of-00002.parquet")
    _write(table.slice(4, 2), folder / "data" / "test-00001-of-00002.parquet")
    _write(table.slice(0, 1), folder / "data" / "validation-00000-of-00001.parquet")
    test = read_published(folder, "chartqa", split="test")
    assert [r.id for r in test] == [f"chartqa/test/{i}" for i in range(6)]  # indices run on across shards
    assert [r.question for r in test] == table["question"].to_pylist()
    assert len(read_published(folder, "chartqa")) == 7
    with pytest.raises(DataError, match=r"no files of split 'train'.*\['test', 'validation'\]"):
        read_published(folder, "chartqa", split="train")


def test_limit_samples_rows_reproducibly(tmp_path, png_bytes):
    path = _write(_chartqa(png_bytes, 40), tmp_path / "test-00000-of-00001.parquet")
    first = [r.id for r in read_published(path, "chartqa", limit=5, seed=1)]
    assert first == [r.id for r in read_published(path, "chartqa", limit=5, seed=1)]
    assert first != [r.id for r in read_published(path, "chartqa", limit=5, seed=2)]
    assert len(first) == 5 and first != [f"chartqa/test/{i}" for i in range(5)]


def test_save_to_disk_arrow_folder(tmp_path, png_bytes):
    table = _docvqa(png_bytes, 3)
    split_folder = tmp_path / "saved" / "validation"
    split_folder.mkdir(parents=True)
    arrow_file = split_folder / "data-00000-of-00001.arrow"
    with pa.OSFile(str(arrow_file), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (tmp_path / "saved" / "dataset_dict.json").write_text('{"splits": ["validation"]}')
    records = read_published(tmp_path / "saved", "docvqa", split="validation")
    assert [r.id for r in records] == ["docvqa/1000", "docvqa/1001", "docvqa/1002"]
    assert records[2].load_image().getpixel((0, 0)) == COLOURS[2]


def test_image_path_without_bytes_is_read_beside_the_file(tmp_path, png_bytes, write_png):
    write_png("pics/chart.png", (1, 2, 3))
    table = _chartqa(png_bytes, 1).set_column(
        3, "image", pa.array([{"bytes": None, "path": "pics/chart.png"}], IMAGE)
    )
    record = read_published(_write(table, tmp_path / "c.parquet"), "chartqa")[0]
    assert record.load_image().getpixel((0, 0)) == (1, 2, 3)


def test_corrupt_embedded_image_names_the_record(tmp_path, png_bytes):
    table = _chartqa(png_bytes, 1).set_column(
        3, "image", pa.array([{"bytes": b"\x89PNG broken", "path": "x.png"}], IMAGE)
    )
    record = read_published(_write(table, tmp_path / "c.parquet"), "chartqa")[0]
    with pytest.raises(DataError, match=rf"{record.id}.*cannot decode embedded image \(x\.png\)"):
        record.load_image()


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_layout_is_detected_from_columns(tmp_path, png_bytes, layout):
    path = _write(BUILDERS[layout](png_bytes, 1), tmp_path / "x.parquet")
    assert detect_layout(path) == layout


def test_unknown_layout(tmp_path, png_bytes):
    path = _write(_chartqa(png_bytes, 1), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="unknown layout"):
        read_published(path, "mmmu")


def test_repeated_images_are_stored_once(tmp_path, png_bytes):
    table = _docvqa(png_bytes, 8)  # four colours over eight rows: each image twice
    records = read_published(_write(table, tmp_path / "d.parquet"), "docvqa")
    assert len({id(r.image_bytes) for r in records}) == len(COLOURS)
    assert records[0].image_bytes == records[4].image_bytes
