"""Approval of expensive jobs that the launcher starts by itself.

A recipe with ``needs_approval: true`` (a big reconstruction, say) is not run when a scan
triggers it: the launcher records the job as usual (data collection, parameters, steps queued)
plus the ProcessingJobParameter :data:`APPROVAL` = ``"awaiting"``, and runs nothing. Facility
staff then approve it (``POST /api/jobs/{id}/approve``, the job page, or :func:`approve`) and it
runs as recorded, under the same job id; or they reject it (:func:`reject`) and its steps are
marked skipped with the reason. ISPyB has no column for this, so the parameter holds the whole
story: ``awaiting``, then ``approved by <user> at <time>`` or ``rejected by <user> at <time>:
<reason>``. The change is one compare-and-set UPDATE, so two people approving at once start the
job once; the second gets a :class:`~hpcproc.errors.ConflictError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hpcproc.dispatch.plan import JobPlan
from hpcproc.errors import ConflictError, InputError
from hpcproc.job_keys import APPROVAL, AWAITING
from hpcproc.jobs import RecordedJob, prepare
from hpcproc.lims import Lims
from hpcproc.lims.records import JobRecord
from hpcproc.recipes import Recipe, find_recipe
from hpcproc.status import Status

__all__ = ["APPROVAL", "AWAITING", "Approval", "approval_of", "approve", "reject"]


@dataclass(frozen=True)
class Approval:
    """Where a job stands: ``state`` is awaiting, approved or rejected; ``text`` the record."""

    state: str
    text: str

    @property
    def awaiting(self) -> bool:
        return self.state == AWAITING


def approval_of(record: JobRecord | Mapping[str, Any]) -> Approval | None:
    """The approval record of a job (a JobRecord or its parameters); None if it never needed one."""
    params = record if isinstance(record, Mapping) else record.parameters
    value = params.get(APPROVAL)
    if not isinstance(value, str) or not value:
        return None
    return Approval(value.split(" ", 1)[0], value)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _awaiting(record: JobRecord) -> None:
    found = approval_of(record)
    if found is None:
        raise ConflictError(f"job {record.id} does not need approval")
    if not found.awaiting:
        raise ConflictError(f"job {record.id} is not awaiting approval: {found.text}")


def _swap(lims: Lims, job_id: int, text: str) -> None:
    if not lims.swap_parameter(job_id, APPROVAL, AWAITING, text):
        now = approval_of(lims.job(job_id))
        raise ConflictError(
            f"job {job_id} is not awaiting approval: {now.text if now else 'no approval record'}"
        )


def recorded_plan(record: JobRecord, recipe: Recipe | None = None) -> tuple[JobPlan, RecordedJob]:
    """The plan of a recorded job, rebuilt from its recipe, scan and recorded parameters, and
    its LIMS ids; InputError if the recipe or the scan is gone or its steps changed since."""
    if record.scan_file is None:
        raise InputError(f"job {record.id} has no scan file recorded")
    found = recipe or find_recipe(record.recipe)
    overrides = {k: v for k, v in record.parameters.items() if k in found.parameters}
    plan = prepare(found, record.scan_file, overrides)
    programs = {s.step_id: s.id for s in record.steps}
    planned = [s.id for s in plan.steps]
    if sorted(planned) != sorted(programs):
        raise InputError(
            f"job {record.id}: recipe {found.name!r} now has steps {', '.join(planned)}, the job "
            f"recorded {', '.join(programs) or 'none'}; reject it and submit the recipe again"
        )
    if record.dc_id is None:
        raise InputError(f"job {record.id} has no data collection recorded")
    return plan, RecordedJob(record.id, int(record.dc_id), programs)


def approve(
    lims: Lims, job_id: int, by: str, recipe: Recipe | None = None
) -> tuple[JobPlan, RecordedJob]:
    """Approve a job awaiting approval; its plan and ids, ready to run (``execute_plan``).

    Everything is checked before the approval is recorded: a job whose recipe or scan is gone
    stays awaiting (InputError). ConflictError if it is not awaiting approval (any more)."""
    record = lims.job(job_id)
    _awaiting(record)
    plan, job = recorded_plan(record, recipe)
    _swap(lims, job_id, f"approved by {by} at {_now()}")
    return plan, job


def reject(lims: Lims, job_id: int, by: str, reason: str = "") -> None:
    """Reject a job awaiting approval: recorded as such, its steps skipped with the reason."""
    record = lims.job(job_id)
    _awaiting(record)
    why = " ".join(reason.split())
    text = f"rejected by {by} at {_now()}" + (f": {why}" if why else "")
    _swap(lims, job_id, text)
    for step in record.steps:
        lims.set_status(step.id, Status.SKIPPED, f"not run: {text}")
