"""The life of a step (one AutoProcProgram): queued -> running -> success | failed | skipped."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        return self in (Status.SUCCESS, Status.FAILED, Status.SKIPPED)


# Rank orders the states; a transition is allowed only forwards, and never out of a final state.
_RANK = {
    Status.QUEUED: 0,
    Status.RUNNING: 1,
    Status.SUCCESS: 2,
    Status.FAILED: 2,
    Status.SKIPPED: 2,
}


def can_move(current: Status, new: Status) -> bool:
    """True when ``current -> new`` is a forward move (queued may go straight to a final state)."""
    if current.final:
        return False
    return _RANK[new] > _RANK[current]
