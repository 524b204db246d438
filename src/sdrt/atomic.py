"""Files that appear whole or not at all: write beside the target, then rename over it.

Every long job here (trace shards, checkpoints, the feature cache, the demo's stage record)
must survive a kill at any moment and never show a reader half a file. Each writer stages under
a name of its own (so two processes writing the same target never share a staging file), syncs
it to disk, and renames it into place, which POSIX makes atomic; a failed write leaves nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(staging_path)`` writes the content; it then replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(staging)
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda staging: staging.write_text(text, encoding="utf-8"))
