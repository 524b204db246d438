import pyarrow.parquet as pq
import pytest

from sdrt.traces.schema import TRACE_SCHEMA
from sdrt.traces.store import TraceStore, TraceStoreError


def _rows(example_ids, k=2):
    return [
        {
            "example_id": eid,
            "example_index": i,
            "question": "q?",
            "prompt_id": f"p{r}",
            "prompt_rank": r,
            "ensemble_answer": "red",
            "prompt_weight": 1.0 / k,
        }
        for i, eid in enumerate(example_ids)
        for r in range(k)
    ]


def test_shards_are_read_back_merged_and_sorted(tmp_path):
    rank0, rank1 = TraceStore(tmp_path, rank=0), TraceStore(tmp_path, rank=1)
    rows = _rows(["a", "b", "c", "d"])
    rank1.write_shard(rows[2:4] + rows[6:8])  # examples b and d
    rank0.write_shard(rows[0:2] + rows[4:6])  # examples a and c
    table = TraceStore(tmp_path).read()
    assert table.column("example_id").to_pylist() == ["a", "a", "b", "b", "c", "c", "d", "d"]
    assert table.column("prompt_rank").to_pylist() == [0, 1] * 4
    assert table.schema.equals(TRACE_SCHEMA)
    assert TraceStore(tmp_path).finished_example_ids() == {"a", "b", "c", "d"}


def test_a_rank_never_overwrites_its_earlier_shards(tmp_path):
    store = TraceStore(tmp_path)
    first = store.write_shard(_rows(["a"]))
    second = TraceStore(tmp_path).write_shard(_rows(["b"]))
    assert first != second
    assert {p.name for p in store.shard_paths()} == {first.name, second.name}
    assert pq.read_table(first).num_rows == 2


def test_no_temporary_files_are_left(tmp_path):
    TraceStore(tmp_path).write_shard(_rows(["a"]))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_manifest_of_another_job_is_refused(tmp_path):
    store = TraceStore(tmp_path)
    store.check_or_write_manifest({"model": "m1", "prompt_ids": ["a"]})
    store.check_or_write_manifest({"model": "m1", "prompt_ids": ["a"]})  # same job: fine
    with pytest.raises(TraceStoreError, match="model"):
        store.check_or_write_manifest({"model": "m2", "prompt_ids": ["a"]})


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(TraceStoreError, match="not a trace folder"):
        TraceStore(tmp_path / "nothing").manifest()
