from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdrt.data import DataError, SkipReport, load_records, scene_split_seed


def test_easy_vqa_source():
    pytest.importorskip("easy_vqa")
    records = load_records("easy-vqa", split="train", limit=4, seed=2)
    assert len(records) == 4 and all(r.id.startswith("easy-vqa/train/") for r in records)
    assert [r.id for r in records] == [r.id for r in load_records("easy-vqa", split="train", limit=4, seed=2)]


def test_scenes_source_splits_use_different_seeds():
    train = load_records("scenes", split="train", limit=30)
    test = load_records("scenes", split="test", limit=30)
    assert len(train) == len(test) == 30
    train_scenes = {r.metadata["description"] for r in train}
    test_scenes = {r.metadata["description"] for r in test}
    assert train_scenes != test_scenes
    assert all(r.id.startswith(f"scenes/{scene_split_seed('test', 0)}/") for r in test)
    train_seeds = {scene_split_seed("train", seed) for seed in range(50)}
    test_seeds = {scene_split_seed("test", seed) for seed in range(50)}
    assert len(train_seeds) == len(test_seeds) == 50 and not train_seeds & test_seeds
    assert min(test_seeds) > -100 and max(test_seeds) < 0  # never a seed that make_scenes(n, seed>=0) uses
    assert {r.metadata["kind"] for r in test} == {"single-hop", "multi-hop"}  # short answers only
    assert [r.id for r in test] == [r.id for r in load_records("scenes", split="test", limit=30)]


def test_scenes_source_with_kinds():
    records = load_records("scenes:multi-hop", limit=20)
    assert records and {r.metadata["kind"] for r in records} == {"multi-hop"}
    both = load_records("scenes:describe,single-hop", limit=40)
    assert {r.metadata["kind"] for r in both} == {"describe", "single-hop"}


def test_jsonl_source_with_skips(tmp_path, write_png, caplog):
    write_png("a.png", (9, 9, 9))
    lines = [{"id": f"q{i}", "image": "a.png", "question": "what?"} for i in range(5)] + ["{broken"]
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines))
    with pytest.raises(DataError, match=r"set\.jsonl line 6"):
        load_records(str(path))
    skips = SkipReport()
    with caplog.at_level(logging.WARNING, logger="sdrt.data"):
        records = load_records(str(path), skip_bad=True, skips=skips, limit=3, seed=1)
    assert len(records) == 3 and skips.count == 1
    assert any("skipped 1" in r.getMessage() for r in caplog.records)  # the closing summary


def test_parquet_source_named_or_detected(tmp_path, png_bytes):
    image = {"bytes": png_bytes((5, 6, 7)), "path": "c.png"}
    table = pa.table(
        {
            "type": ["human_test"] * 3,
            "question": ["q0?", "q1?", "q2?"],
            "answer": ["1", "2", "3"],
            "image": pa.array([image] * 3, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        }
    )
    folder = tmp_path / "chartqa" / "data"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "test-00000-of-00001.parquet")
    named = load_records(str(tmp_path / "chartqa"), layout="chartqa")
    detected = load_records(str(tmp_path / "chartqa"))
    assert [r.id for r in named] == [r.id for r in detected] == [f"chartqa/test/{i}" for i in range(3)]
    assert detected[0].task_type == "chart" and detected[2].answers == ["3"]
    with pytest.raises(DataError, match="no files of split 'validation'"):
        load_records(str(tmp_path / "chartqa"), split="validation")


def test_unknown_source(tmp_path):
    with pytest.raises(DataError, match="unknown data source"):
        load_records(str(tmp_path / "nothing-here"))


def test_scene_seeds_must_not_reach_into_the_test_split():
    with pytest.raises(DataError, match="seed must be in 0..999999"):
        load_records("scenes", split="train", seed=-1)
    with pytest.raises(DataError, match="seed must be in 0..999999"):
        load_records("scenes", split="train", seed=1_000_000)  # would reach the validation seeds
    with pytest.raises(DataError, match="unknown split"):
        load_records("scenes", split="dev")
