"""Refuse an overlay that overrides what a study run exists to change (scripts/study.sh).

The study lays OVERLAYS over every training's configs as the last word. An overlay that sets a
field the run's own config also sets (the CE-only loss over the KL loss sweep, another set of
layers over the layer sweep) would train something other than what the run is named after, and
nothing downstream could tell.

    python scripts/overlay_conflicts.py RUN OWN_CONFIG OVERLAY...   # exit 2 and say which fields
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def settings(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config's fields as dotted names, at the depth sdrt's deep merge replaces them."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= settings(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def overridden(own: dict[str, Any], overlay: dict[str, Any]) -> list[str]:
    """Fields the overlay sets to another value than the run's own config does."""
    mine, theirs = settings(own), settings(overlay)
    return sorted(name for name in mine.keys() & theirs.keys() if mine[name] != theirs[name])


def load(path: str) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text()) or {}


def main(argv: list[str]) -> int:
    run, own_path, *overlay_paths = argv
    own = load(own_path)
    problems = [
        f"OVERLAYS: {path} sets {', '.join(names)}, which {run} sets itself ({own_path}); "
        f"an overlay is the last word, so {run} would not train what it is named after"
        for path in overlay_paths
        if (names := overridden(own, load(path)))
    ]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
