"""Live status of a step, as one line both people and programs read (LIMS processingMessage)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    done: int  # points processed
    written: int  # points the detector has written so far
    total: int  # points in the scan
    rate: float  # points processed per second, recently
    lag: float  # seconds between a point being written and being processed (latest)

    def text(self) -> str:
        return (
            f"live: {self.done}/{self.written}/{self.total} processed/written/total, "
            f"{self.rate:.1f} points/s, lag {self.lag:.2f} s"
        )


_PATTERN = re.compile(
    r"live: (\d+)/(\d+)/(\d+) processed/written/total, ([\d.]+) points/s, lag ([\d.]+) s"
)


def parse(text: str | None) -> Progress | None:
    """The Progress in a step's message, or None if it holds none."""
    m = _PATTERN.search(text or "")
    if m is None:
        return None
    done, written, total = (int(g) for g in m.groups()[:3])
    return Progress(done, written, total, float(m.group(4)), float(m.group(5)))
