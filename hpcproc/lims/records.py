"""Small frozen values the LIMS adapter returns: read once, safe to pass between threads.

Times are naive datetimes in the LIMS host's local time (ISPyB's convention).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hpcproc.status import Status

__all__ = [
    "AttachmentRecord",
    "JobRecord",
    "JobSummary",
    "MessageRecord",
    "ProgramRecord",
    "overall_status",
]


@dataclass(frozen=True)
class MessageRecord:
    """One AutoProcProgramMessage."""

    id: int
    severity: str  # ERROR | WARNING | INFO
    message: str
    description: str | None
    time: datetime | None


@dataclass(frozen=True)
class AttachmentRecord:
    """One AutoProcProgramAttachment."""

    id: int
    file_type: str  # Log | Result | Graph | Debug | Input
    path: Path
    importance_rank: int | None
    time: datetime | None


@dataclass(frozen=True)
class ProgramRecord:
    """One step of a job (an AutoProcProgram)."""

    id: int
    job_id: int
    step_id: str  # the recipe's step id, e.g. "integrate"
    uses: str  # the step type, e.g. "xrd_integrate"
    status: Status
    start: datetime | None
    end: datetime | None
    message: str | None  # the latest status message (truncated to 255 characters)
    environment: dict[str, Any] = field(default_factory=dict)
    messages: list[MessageRecord] = field(default_factory=list)  # oldest first
    attachments: list[AttachmentRecord] = field(default_factory=list)  # oldest first
    created: datetime | None = None


@dataclass(frozen=True)
class JobRecord:
    """One run of a recipe on one scan (a ProcessingJob) with its steps."""

    id: int
    dc_id: int | None
    recipe: str
    display_name: str
    comments: str
    automatic: bool
    created: datetime | None
    parameters: dict[str, Any]
    scan_file: Path | None
    steps: list[ProgramRecord]  # in creation order
    status: Status


@dataclass(frozen=True)
class JobSummary:
    """A line of a job list."""

    id: int
    recipe: str
    scan_file: Path | None
    created: datetime | None
    status: Status
    n_steps: int


def overall_status(statuses: Iterable[Status]) -> Status:
    """The status of a job from the statuses of its steps.

    - failed if any step failed (even while others still run);
    - otherwise running if any step runs, or some steps are final and others still queued;
    - queued if every step is queued, or the job has no step yet;
    - skipped if every step was skipped;
    - success if every step is final and none failed (success and skipped mixed).
    """
    seen = set(statuses)
    if not seen:
        return Status.QUEUED
    if Status.FAILED in seen:
        return Status.FAILED
    if Status.RUNNING in seen:
        return Status.RUNNING
    if seen == {Status.QUEUED}:
        return Status.QUEUED
    if Status.QUEUED in seen:
        return Status.RUNNING
    if seen == {Status.SKIPPED}:
        return Status.SKIPPED
    return Status.SUCCESS
