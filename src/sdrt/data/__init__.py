"""Questions with images, from wherever they come, as one record type (``VQARecord``).

``load_records`` is the one entry point the CLI and the pipeline stages use:

* ``"easy-vqa"``: the installed easy-vqa package (splits train/test);
* ``"scenes"``: generated scenes' single-hop and multi-hop questions (short exact answers);
  ``"scenes:multi-hop"``, ``"scenes:describe,single-hop"`` and so on choose the kinds. Train
  scenes are ``make_scenes(n, seed)``; validation and test scenes use negative seeds, which no
  caller of ``make_scenes`` with a seed >= 0 (alignment, for one) ever sees;
* a ``.jsonl`` file in our own format (see ``sdrt.data.jsonl``);
* a Parquet/Arrow file or folder of a published benchmark (``layout="docvqa"`` and so on, or
  guessed from the columns when not given; see ``sdrt.data.published``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sdrt.data.easyvqa import EASY_VQA_SPLITS, easy_vqa_answers, read_easy_vqa
from sdrt.data.jsonl import read_jsonl
from sdrt.data.published import LAYOUTS, detect_layout, read_published
from sdrt.data.records import TASK_TYPES, DataError, TaskType, VQARecord, seeded_subset
from sdrt.data.scenes import (
    COLOURS,
    SCENE_KINDS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    SceneQuestion,
    make_scenes,
    scene_questions,
    scene_records,
)
from sdrt.data.skips import SkipReport

__all__ = [
    "COLOURS",
    "EASY_VQA_SPLITS",
    "LAYOUTS",
    "SCENE_KINDS",
    "SHAPES",
    "SIZES",
    "TASK_TYPES",
    "DataError",
    "Scene",
    "SceneObject",
    "SceneQuestion",
    "SkipReport",
    "TaskType",
    "VQARecord",
    "detect_layout",
    "easy_vqa_answers",
    "load_records",
    "make_scenes",
    "read_easy_vqa",
    "read_jsonl",
    "read_published",
    "scene_questions",
    "scene_records",
    "scene_split_seed",
    "seeded_subset",
]

logger = logging.getLogger("sdrt.data")

SCENE_SPLITS = ("train", "validation", "test")
VALIDATION_SEED_BASE = 1_000_000
DEFAULT_SCENE_COUNT = 200
DEFAULT_SOURCE_KINDS = {"single-hop", "multi-hop"}  # descriptions are not short-answer questions


def scene_split_seed(split: str, seed: int) -> int:
    """Train scenes keep ``seed``; test scenes take ``-1 - seed``, validation ``-1_000_001 - seed``.

    The three never share scenes (for seeds below a million), so tuning on validation leaves
    the test scenes untouched.
    """
    if split not in SCENE_SPLITS:
        raise DataError(f"scenes: unknown split {split!r}; known: {SCENE_SPLITS}")
    if not 0 <= seed < VALIDATION_SEED_BASE:
        raise DataError(
            f"scenes: seed must be in 0..{VALIDATION_SEED_BASE - 1} (negative seeds are held out), got {seed}"
        )
    if split == "train":
        return seed
    return -1 - seed if split == "test" else -1 - VALIDATION_SEED_BASE - seed


def load_records(
    source: str,
    *,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    layout: str | None = None,
    skips: SkipReport | None = None,
) -> list[VQARecord]:
    """Records of ``source`` (see the module docstring for the sources understood).

    ``limit`` keeps a seeded random sample (same seed, same sample). With ``skip_bad`` bad
    items are logged and counted in ``skips`` instead of raising ``DataError``; a summary is
    logged at the end.
    """
    skips = skips if skips is not None else SkipReport()
    records = _dispatch(source, split, limit, seed, skip_bad, layout, skips)
    if skips.count:
        logger.warning("%s: %s", source, skips.summary())
    return records


def _dispatch(
    source: str,
    split: str,
    limit: int | None,
    seed: int,
    skip_bad: bool,
    layout: str | None,
    skips: SkipReport,
) -> list[VQARecord]:
    if source == "easy-vqa":
        return read_easy_vqa(split, limit=limit, seed=seed)
    if source == "scenes" or source.startswith("scenes:"):
        return _load_scenes(source, split, limit, seed)
    path = Path(source)
    if path.suffix == ".jsonl":
        return seeded_subset(read_jsonl(path, skip_bad, skips=skips), limit, seed)
    if path.exists():
        layout = layout or detect_layout(path)
        return read_published(
            path, layout, split=split, skip_bad=skip_bad, limit=limit, seed=seed, skips=skips
        )
    raise DataError(
        f"unknown data source {source!r}: expected 'easy-vqa', 'scenes[:kinds]', a .jsonl file "
        "or an existing Parquet/Arrow file or folder"
    )


def _load_scenes(source: str, split: str, limit: int | None, seed: int) -> list[VQARecord]:
    kinds = set(source.split(":", 1)[1].split(",")) if ":" in source else DEFAULT_SOURCE_KINDS
    # Every scene yields at least one record of each kind (multi-hop: nearly always), so `limit`
    # scenes give enough records, and the sample then spreads over the scenes.
    count = DEFAULT_SCENE_COUNT if limit is None else max(limit, 1)
    records = scene_records(make_scenes(count, scene_split_seed(split, seed)), kinds=kinds)
    return seeded_subset(records, limit, seed)
