"""The benchmark registry: each benchmark is data (where, which split, which metric), not code.

Published benchmarks are read from local copies under ``--data-dir`` in the layout they are
published in (see ``sdrt.data.published``); ``easy-vqa`` and the generated scenes are built in.
Scene benchmarks keep kinds apart, so perception and reasoning are scored apart: ``scenes`` is
multi-hop questions only, ``scenes-single-hop`` single lookups, ``scenes-describe`` whole
descriptions scored by object accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from sdrt.data import load_records
from sdrt.data.published import LAYOUTS, Layout
from sdrt.data.records import DataError, VQARecord


@dataclass(frozen=True)
class Benchmark:
    name: str
    metric: str  # a key of sdrt.evaluation.metrics.METRICS
    task_type: str
    split: str  # the split scores are reported on
    description: str
    layout: str | None = None  # published layout; None for built-in data
    folder: str | None = None  # sub-folder of --data-dir holding the files
    source: str | None = None  # built-in data source, when it differs from the name
    prompt_style: Literal["short-answer", "open"] = "short-answer"  # open: the question as asked, long reply

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        metric: str,
        *,
        layout: str | None = None,
        task_type: str = "scene",
        split: str | None = None,
        prompt_style: Literal["short-answer", "open"] = "short-answer",
    ) -> Benchmark:
        """A user's own data as a benchmark: a ``.jsonl`` file of ours or a Parquet file/folder.

        As lmms-eval users point a task YAML at their files: the data, its metric, its task
        type (which chooses the ensemble's prompts). A Parquet folder's layout is guessed from
        its columns when not given, and its split, when not given, is ``test`` or the only one
        its file names carry.
        """
        from sdrt.evaluation.metrics import METRICS

        if metric not in METRICS:
            raise DataError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        file = Path(path).expanduser().resolve()
        if not file.exists():
            raise DataError(f"{path}: no such file or folder")
        name = file.stem if file.is_file() else file.name
        where: dict[str, str] = {"source": str(file)}  # a .jsonl file of ours
        if file.suffix != ".jsonl":
            from sdrt.data.published import data_splits, detect_layout

            where = {"layout": layout or detect_layout(file), "folder": str(file)}
            if split is None:
                found = data_splits(file)
                split = found[0] if len(found) == 1 else "test"
        return cls(
            name, metric, task_type, split or "test", f"your data: {file}", prompt_style=prompt_style, **where
        )

    @property
    def builtin(self) -> bool:
        return self.layout is None

    def data_path(self, data_dir: str | Path) -> Path | None:
        return None if self.builtin else Path(data_dir) / (self.folder or self.name)

    def is_available(self, data_dir: str | Path) -> bool:
        path = self.data_path(data_dir)
        return path is None or path.exists()

    def load(
        self,
        data_dir: str | Path = "data",
        *,
        split: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        skip_bad: bool = False,
    ) -> list[VQARecord]:
        path = self.data_path(data_dir)
        if path is None:
            return load_records(
                self.source or self.name, split=split or self.split, limit=limit, seed=seed, skip_bad=skip_bad
            )
        if not path.exists():
            raise DataError(
                f"benchmark {self.name}: no data at {path}; put the published {self.layout} files "
                "(Parquet shards) there or pass --data-dir"
            )
        return load_records(
            str(path),
            split=split or self.split,
            limit=limit,
            seed=seed,
            skip_bad=skip_bad,
            layout=self.layout,
        )


def _published(layout: Layout) -> Benchmark:
    return Benchmark(
        layout.name, layout.metric, layout.task_type, layout.split, layout.description, layout=layout.name
    )


# Built-in data: the one home of these benchmarks' facts (published ones live in LAYOUTS).
_BUILT_IN = (
    Benchmark("easy-vqa", "exact_match", "scene", "test", "easy-vqa: shapes and colours (built in)"),
    Benchmark(
        "scenes",
        "exact_match",
        "scene",
        "test",
        "generated scenes, multi-hop questions with exact answers (built in)",
        source="scenes:multi-hop",
    ),
    Benchmark(
        "scenes-three-hop",
        "exact_match",
        "scene",
        "test",
        "generated scenes, three-hop questions: two relations chained, or a relation and a "
        "comparison (built in)",
        source="scenes:three-hop",
    ),
    Benchmark(
        "scenes-single-hop",
        "exact_match",
        "scene",
        "test",
        "generated scenes, single-hop questions: one lookup or one filter (built in)",
        source="scenes:single-hop",
    ),
    Benchmark(
        "scenes-describe",
        "object_accuracy",
        "scene",
        "test",
        "generated scenes described left to right, scored object by object (built in)",
        source="scenes:describe",
        prompt_style="open",
    ),
)
BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType(
    {b.name: b for b in (*(_published(layout) for layout in LAYOUTS.values()), *_BUILT_IN)}
)


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None
