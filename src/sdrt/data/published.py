"""Benchmarks read from local files in the layouts they are published in on the Hugging Face hub.

The lmms-lab copies (the ones lmms-eval evaluates on) are Parquet shards named
``<split>-00000-of-0000N.parquet``; images are embedded as ``{bytes, path}`` structs. A
``datasets`` ``save_to_disk`` folder (Arrow IPC files, one subfolder per split) works too.
Images stay encoded in the records (``VQARecord.image_bytes``) until something needs pixels.

Layouts and the task type each maps to:

=============  ==============================================  ===============
layout         columns used                                    task type
=============  ==============================================  ===============
docvqa         questionId, question, answers, image            document
infovqa        questionId, question, answers, image            document
chartqa        question, answer, image                         chart
textvqa        question_id, question, answers, image           text-in-image
scienceqa      question, choices, answer (index), image        multiple-choice
=============  ==============================================  ===============

Other published columns are kept in ``metadata`` when present (ScienceQA's ``hint`` is the
context its prompt needs). ScienceQA rows without an image are skipped and counted: this is a
visual question answering toolkit. Answers of hidden test splits (null) become empty lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdrt.data.records import DataError, VQARecord, seeded_subset
from sdrt.data.skips import SkipReport, fail_or_skip

KNOWN_SPLITS = ("train", "validation", "val", "test", "dev", "minival", "testdev")
DATA_SUFFIXES = (".parquet", ".arrow")


@dataclass(frozen=True)
class Row:
    """One table row and where it came from, for ids and error messages."""

    values: dict[str, Any]
    file: Path
    split: str
    index: int  # position within its split, counted over all shards in name order

    @property
    def where(self) -> str:
        return f"{self.file} row {self.index}"


@dataclass(frozen=True)
class Layout:
    """A published benchmark as data: its columns, how a row becomes a record, how it is scored.

    The one home of these facts: ``sdrt.evaluation.benchmarks`` builds its registry from
    this table (as lmms-eval's task YAML holds a dataset's columns, split and metric together).
    """

    name: str
    task_type: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    build: Callable[[Row], dict[str, Any]]  # VQARecord fields other than the image
    metric: str  # a key of sdrt.evaluation.metrics.METRICS, as lmms-eval and VLMEvalKit score it
    split: str  # the split scores are reported on
    description: str
    needs_image_rows: bool = False  # rows with a null image are expected and skipped (ScienceQA)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


def _str_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(item) for item in value]


def _metadata(row: Row, layout_name: str, names: tuple[str, ...]) -> dict[str, Any]:
    kept = {name: row.values[name] for name in names if name in row.values}
    return {"dataset": layout_name, "split": row.split, **kept}


def _by_question_id(dataset: str, names: tuple[str, ...]) -> Callable[[Row], dict[str, Any]]:
    """DocVQA and InfographicVQA rows: the same fields, ids from ``questionId``."""

    def record(row: Row) -> dict[str, Any]:
        return {
            "id": f"{dataset}/{row.values['questionId']}",
            "question": row.values["question"],
            "answers": _str_list(row.values["answers"]),
            "metadata": _metadata(row, dataset, names),
        }

    return record


_docvqa = _by_question_id(
    "docvqa", ("question_types", "docId", "ucsf_document_id", "ucsf_document_page_no", "data_split")
)
_infovqa = _by_question_id("infovqa", ("answer_type", "operation/reasoning", "image_url", "data_split"))


def _chartqa(row: Row) -> dict[str, Any]:
    answer = row.values["answer"]
    return {
        "id": f"chartqa/{row.split}/{row.index}",
        "question": row.values["question"],
        "answers": [] if answer is None else [str(answer)],
        "metadata": _metadata(row, "chartqa", ("type",)),
    }


def _textvqa(row: Row) -> dict[str, Any]:
    names = ("image_id", "image_classes", "image_width", "image_height", "set_name", "ocr_tokens")
    return {
        "id": f"textvqa/{row.values['question_id']}",
        "question": row.values["question"],
        "answers": _str_list(row.values["answers"]),  # all ten, duplicates kept: VQA accuracy counts them
        "metadata": _metadata(row, "textvqa", names),
    }


def _scienceqa(row: Row) -> dict[str, Any]:
    choices = _str_list(row.values["choices"])
    answer_index = row.values["answer"]
    if answer_index is not None and not 0 <= int(answer_index) < len(choices):
        raise DataError(f"answer index {answer_index} outside its {len(choices)} choices")
    names = ("hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")
    return {
        "id": f"scienceqa/{row.split}/{row.index}",
        "question": row.values["question"],
        "choices": choices,
        "answer_index": None if answer_index is None else int(answer_index),
        "answers": [] if answer_index is None else [choices[int(answer_index)]],
        "metadata": _metadata(row, "scienceqa", names),
    }


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "docvqa",
            "document",
            ("questionId", "question", "answers", "image"),
            ("question_types", "docId", "ucsf_document_id", "ucsf_document_page_no", "data_split"),
            _docvqa,
            metric="anls",
            split="validation",
            description="DocVQA: questions on scanned documents",
        ),
        Layout(
            "infovqa",
            "document",
            ("questionId", "question", "answers", "image"),
            ("answer_type", "operation/reasoning", "image_url", "data_split"),
            _infovqa,
            metric="anls",
            split="validation",
            description="InfographicVQA: questions on infographics",
        ),
        Layout(
            "chartqa",
            "chart",
            ("question", "answer", "image"),
            ("type",),
            _chartqa,
            metric="relaxed_accuracy",
            split="test",
            description="ChartQA: questions on charts",
        ),
        Layout(
            "textvqa",
            "text-in-image",
            ("question_id", "question", "answers", "image"),
            ("image_id", "image_classes", "image_width", "image_height", "set_name", "ocr_tokens"),
            _textvqa,
            metric="vqa_accuracy",
            split="validation",
            description="TextVQA: questions that need reading text in photos",
        ),
        Layout(
            "scienceqa",
            "multiple-choice",
            ("question", "choices", "answer", "image"),
            ("hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution"),
            _scienceqa,
            metric="multiple_choice_accuracy",
            split="test",
            description="ScienceQA (image subset): multiple-choice science questions",
            needs_image_rows=True,
        ),
    )
}
LAYOUT_ALIASES = {"infographicvqa": "infovqa", "scienceqaimg": "scienceqa", "scienceqafull": "scienceqa"}

# Columns only one layout has, for telling layouts apart when none is named.
SIGNATURE_COLUMNS = {
    "docvqa": {"questionId", "question_types"},
    "infovqa": {"questionId", "answer_type"},
    "chartqa": {"type", "answer"},
    "textvqa": {"question_id", "question_tokens"},
    "scienceqa": {"choices", "hint"},
}


def layout_named(name: str) -> Layout:
    key = name.lower().replace("-", "").replace("_", "")
    key = LAYOUT_ALIASES.get(key, key)
    if key not in LAYOUTS:
        raise DataError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)}")
    return LAYOUTS[key]


def detect_layout(path: str | Path) -> str:
    """The layout whose tell-tale columns the first data file has; ``DataError`` if none or several."""
    files = data_files(Path(path), split=None)
    names = set(_schema(files[0]).names)
    found = [name for name, signature in SIGNATURE_COLUMNS.items() if signature <= names]
    if len(found) != 1:
        raise DataError(
            f"{files[0]}: cannot tell the layout from its columns {sorted(names)} "
            f"(matches {found or 'none'}); pass layout= one of {sorted(LAYOUTS)}"
        )
    return found[0]


def read_published(
    path: str | Path,
    layout: str,
    split: str | None = None,
    skip_bad: bool = False,
    *,
    limit: int | None = None,
    seed: int = 0,
    skips: SkipReport | None = None,
) -> list[VQARecord]:
    """Records of a published benchmark's Parquet (or Arrow) files.

    ``path`` is one file or a folder of shards; ``split`` keeps the shards of that split
    (by file or folder name). ``limit`` samples rows (seeded) before any image bytes are
    copied out of the tables. Bad rows raise ``DataError`` naming file and row, or with
    ``skip_bad`` are logged and counted in ``skips``.
    """
    chosen = layout_named(layout)
    skips = skips if skips is not None else SkipReport()
    tables = [(file, file_split, _read_table(file, chosen)) for file, file_split in _split_files(path, split)]
    refs = list(_usable_rows(tables, chosen, skips))
    records = []
    shared: dict[bytes, bytes] = {}  # DocVQA asks ~4 questions per page: keep one copy of each image
    for row in _materialise(tables, seeded_subset(refs, limit, seed)):
        record = _to_record(row, chosen, skip_bad, skips)
        if record is not None:
            if record.image_bytes:
                record.image_bytes = shared.setdefault(record.image_bytes, record.image_bytes)
            records.append(record)
    return records


# --- files -------------------------------------------------------------------------------------


def data_files(path: Path, split: str | None) -> list[Path]:
    """The Parquet/Arrow files under ``path`` (of ``split``, when the names say which split)."""
    return [file for file, _ in _split_files(path, split)]


def data_splits(path: Path) -> list[str]:
    """The splits the data files under ``path`` belong to, by their names."""
    return sorted({file_split for _, file_split in _split_files(path, None)})


def _split_files(path: str | Path, split: str | None) -> list[tuple[Path, str]]:
    path = Path(path)
    if path.is_file():
        return [(path, _split_of(path) or split or path.stem)]  # one file: its own name decides
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    # `cache-*.arrow` are datasets' map() caches, not data.
    files = sorted(
        p
        for p in path.rglob("*")
        if p.suffix in DATA_SUFFIXES and p.is_file() and not p.name.startswith("cache-")
    )
    if not files:
        raise DataError(f"{path}: no .parquet or .arrow files")
    labelled = [(file, _split_of(file)) for file in files]
    if split is None:
        return [(file, file_split or file.parent.name) for file, file_split in labelled]
    chosen = [(file, split) for file, file_split in labelled if file_split == split]
    if chosen:
        return chosen
    known = sorted({file_split for _, file_split in labelled if file_split})
    if known:
        raise DataError(f"{path}: no files of split {split!r}; splits found: {known}")
    return [(file, split) for file in files]  # unlabelled shards: all of them are the split asked for


def _split_of(file: Path) -> str | None:
    """The split a shard belongs to: its name prefix (``test-00000-of-00002``) or its folder."""
    prefix = file.stem.split("-", 1)[0]
    if prefix in KNOWN_SPLITS:
        return prefix
    return file.parent.name if file.parent.name in KNOWN_SPLITS else None


def _schema(file: Path) -> pa.Schema:
    if file.suffix == ".parquet":
        try:
            return pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet file: {exc}") from exc
    return _read_arrow(file).schema


def _read_arrow(file: Path) -> pa.Table:
    """``save_to_disk`` writes the Arrow streaming format; plain Arrow IPC files are accepted too."""
    try:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        pass
    try:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_file(source).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{file}: not a readable Arrow file: {exc}") from exc


def _read_table(file: Path, layout: Layout) -> pa.Table:
    names = set(_schema(file).names)
    missing = [name for name in layout.required if name not in names]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing} of the {layout.name} layout")
    columns = [name for name in layout.columns if name in names]
    if file.suffix == ".parquet":
        try:
            return pq.read_table(file, columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet file: {exc}") from exc
    return _read_arrow(file).select(columns)


# --- rows --------------------------------------------------------------------------------------

RowRef = tuple[int, int, int]  # (table number, row in that table, index within the split)


def _usable_rows(
    tables: list[tuple[Path, str, pa.Table]], layout: Layout, skips: SkipReport
) -> Iterator[RowRef]:
    """Every row, except image-less ones where the layout expects them (counted, logged at INFO)."""
    next_index: dict[str, int] = {}
    for number, (file, split, table) in enumerate(tables):
        start = next_index.get(split, 0)
        next_index[split] = start + table.num_rows
        has_image = pc.is_valid(table["image"]).to_pylist() if layout.needs_image_rows else None
        for row in range(table.num_rows):
            if has_image is not None and not has_image[row]:
                skips.skip(f"{file} row {start + row}", "no image", level=logging.INFO)
                continue
            yield number, row, start + row


def _materialise(tables: list[tuple[Path, str, pa.Table]], refs: list[RowRef]) -> Iterator[Row]:
    """Python values for the chosen rows only, table by table, in the original order."""
    by_table: dict[int, list[RowRef]] = {}
    for ref in refs:
        by_table.setdefault(ref[0], []).append(ref)
    for number, chosen in by_table.items():
        file, split, table = tables[number]
        picked = table.take(pa.array([row for _, row, _ in chosen], type=pa.int64())).to_pylist()
        for values, (_, _, index) in zip(picked, chosen, strict=True):
            yield Row(values, file, split, index)


def _to_record(row: Row, layout: Layout, skip_bad: bool, skips: SkipReport) -> VQARecord | None:
    try:
        fields = layout.build(row)
        image_bytes, image_path, image_name = _image_source(row)
        if image_name:
            fields["metadata"]["image_name"] = image_name
        return VQARecord(**fields, task_type=layout.task_type, image_bytes=image_bytes, image_path=image_path)
    except DataError as exc:
        fail_or_skip(row.where, str(exc), skip_bad=skip_bad, skips=skips)
    except (KeyError, TypeError, ValueError) as exc:
        fail_or_skip(row.where, f"unexpected value: {exc!r}", skip_bad=skip_bad, skips=skips)
    return None


def _image_source(row: Row) -> tuple[bytes | None, str | None, str | None]:
    """(embedded bytes, or a real path next to the data; the original file name, if any).

    The name of an embedded image is not a path on this machine, so it goes to metadata and
    ``image_path`` stays for files that exist.
    """
    cell = row.values["image"]
    if isinstance(cell, bytes | bytearray):
        return bytes(cell), None, None
    if not isinstance(cell, dict):
        raise DataError("no image")
    data, name = cell.get("bytes"), cell.get("path")
    if data:
        return bytes(data), None, name
    if name:
        path = Path(name) if Path(name).is_absolute() else row.file.parent / name
        if path.is_file():
            return None, str(path), name
        raise DataError(f"image not embedded and not found: {path}")
    raise DataError("no image")
