"""Counting bad input that a reader chose to skip instead of failing on."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from sdrt.data.records import DataError

logger = logging.getLogger("sdrt.data")


@dataclass
class SkipReport:
    """Skipped items and why, so that a caller can print a count after a lenient read.

    Every skip is logged once, at WARNING level unless the caller expects it (for example
    ScienceQA's text-only rows, logged at INFO); ``summary()`` gives the totals by reason.
    """

    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)

    def skip(self, where: str, reason: str, detail: str = "", *, level: int = logging.WARNING) -> None:
        self.skipped.append((where, reason))
        logger.log(level, "skipped %s: %s%s", where, reason, f" ({detail})" if detail else "")

    @property
    def count(self) -> int:
        return len(self.skipped)

    def by_reason(self) -> Counter[str]:
        return Counter(reason for _, reason in self.skipped)

    def summary(self) -> str:
        if not self.skipped:
            return "nothing skipped"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.by_reason().items()))
        return f"skipped {self.count}: {parts}"


def fail_or_skip(where: str, reason: str, *, skip_bad: bool, skips: SkipReport, detail: str = "") -> None:
    """The one strict-or-lenient choice every reader makes: raise ``DataError`` or count a skip."""
    if not skip_bad:
        raise DataError(f"{where}: {reason}" + (f" ({detail})" if detail else ""))
    skips.skip(where, reason, detail)
