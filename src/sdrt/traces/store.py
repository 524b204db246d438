"""Resumable Parquet shard store for reasoning traces.

A job writes one shard per chunk of finished examples. Each shard is written to a temporary
name and renamed into place, so a job killed at any moment (SIGKILL included) leaves only
complete shards; a rerun reads the example ids already present and skips them. Ranks of a
multi-process job write their own shards (``rank{r}-…``) and never touch each other's files;
readers merge every shard in the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdrt.atomic import atomic_write, atomic_write_text
from sdrt.reasoning.ensemble import Candidate
from sdrt.traces.schema import TRACE_SCHEMA

MANIFEST = "manifest.json"


class TraceStoreError(RuntimeError):
    """The trace folder is inconsistent with the job asked for (or unreadable)."""


class TraceStore:
    def __init__(self, root: str | Path, rank: int = 0) -> None:
        self.root = Path(root)
        self.rank = rank
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f".rank{rank}-shard*.tmp"):  # a write cut short by a kill
            stale.unlink(missing_ok=True)

    # --- manifest: what job produced this folder ------------------------------------------

    def check_or_write_manifest(self, manifest: dict[str, Any]) -> None:
        """Refuse to mix traces of different jobs (model, prompts, data) in one folder."""
        path = self.root / MANIFEST
        if path.exists():
            existing = json.loads(path.read_text())
            changed = sorted(k for k in manifest if existing.get(k) != manifest[k])
            if changed:
                raise TraceStoreError(
                    f"{self.root} holds traces of a different job (differs in: {', '.join(changed)}); "
                    "use another --out folder or delete this one"
                )
            return
        atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True))

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.exists():
            raise TraceStoreError(f"{self.root} has no {MANIFEST}: not a trace folder")
        return json.loads(path.read_text())

    # --- shards ---------------------------------------------------------------------------

    def shard_paths(self) -> list[Path]:
        return sorted(self.root.glob("rank*-shard*.parquet"))

    def finished_example_ids(self) -> set[str]:
        done: set[str] = set()
        for path in self.shard_paths():
            done.update(pq.read_table(path, columns=["example_id"]).column("example_id").to_pylist())
        return done

    def write_shard(self, rows: list[dict[str, Any]]) -> Path:
        """Write rows (all prompts of whole examples) as one new shard, atomically."""
        table = pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)
        index = len(list(self.root.glob(f"rank{self.rank}-shard*.parquet")))
        final = self.root / f"rank{self.rank}-shard{index:05d}.parquet"
        while final.exists():  # a shard from an earlier run of this rank
            index += 1
            final = self.root / f"rank{self.rank}-shard{index:05d}.parquet"
        return atomic_write(final, lambda staging: pq.write_table(table, staging))

    def read(self) -> pa.Table:
        """All shards of all ranks, merged and sorted by example then prompt order."""
        paths = self.shard_paths()
        if not paths:
            return TRACE_SCHEMA.empty_table()
        table = pa.concat_tables(pq.read_table(p, schema=TRACE_SCHEMA) for p in paths)
        return table.sort_by([("example_index", "ascending"), ("prompt_rank", "ascending")])


def read_traces(root: str | Path) -> pa.Table:
    return TraceStore(root).read()


def row_candidates(rows: list[dict[str, Any]]) -> list[Candidate]:
    """One example's trace rows (in prompt order) as the candidates an ensemble votes over."""
    return [
        Candidate(
            prompt_id=row["prompt_id"],
            answer=row["answer"] or "",
            logprob=row.get("answer_logprob") or 0.0,
            mean_logprob=row.get("answer_mean_logprob"),
        )
        for row in rows
    ]
