"""The resume rule every training job shares: a checkpoint resumes only the settings that wrote it.

A job saves its settings' fingerprint (a JSON-able mapping) in each checkpoint and compares it
with the resuming run's own; any difference is refused, naming the fields, because restoring
the old optimiser and schedule under new settings silently trains something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def fingerprint_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted names of the settings that differ (nested sections compared field by field)."""
    differing: list[str] = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differing += [f"{key}.{name}" for name in fingerprint_mismatch(old, new)]
        elif key not in saved or key not in current or old != new:
            differing.append(str(key))
    return differing


def mismatch_message(checkpoint: object, differing: list[str], restart_hint: str) -> str:
    """One line for the user: where, which fields, and how to start over."""
    return (
        f"{checkpoint} was written with other settings (differs in: {', '.join(differing)}); {restart_hint}"
    )
