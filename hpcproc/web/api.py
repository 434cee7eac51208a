"""The JSON API (``/api/...``): recipes, jobs (submit, reprocess, follow, download), visits.

Every route needs a user (401 without a valid token). A job, visit or attachment the user may
not see is answered 404, as if it did not exist; submitting on a scan of a visit the user does
not belong to, or naming a file outside the data roots, is 403. Approving or rejecting a job
held for approval (:mod:`hpcproc.approval`) is for staff only (403), and 409 when the job is
not awaiting approval. Any user of a job's visit may cancel it while it runs (409 once it has
ended). Bad parameters are 422 with a
one-line reason naming the parameter. Errors are JSON ``{"detail": reason}``.

The helpers below the routes (:func:`visible_job`, :func:`job_json`, :func:`listing_json`,
:func:`recipe_json`, :func:`recipes_for`, :func:`submit_job`, :func:`reprocess_job`) are what
the HTML pages use too, so both answer alike.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from hpcproc.approval import approval_of, approve, reject
from hpcproc.cancel import cancel_of, request_cancel
from hpcproc.dispatch.sizing import sized_steps
from hpcproc.errors import HpcprocError, InputError, LimsError
from hpcproc.formats import read_scan_info
from hpcproc.lims import Lims
from hpcproc.lims.adapter import LOCAL_VISIT
from hpcproc.lims.queries import JobListing, find_jobs
from hpcproc.lims.records import JobRecord
from hpcproc.recipes import Recipe, list_recipes
from hpcproc.reprocess import plan_reprocessing, reprocess_of
from hpcproc.web.app import CurrentUser, Services, confined, root, services
from hpcproc.web.auth import User
from hpcproc.web.jobs import runner

router = APIRouter(prefix="/api", tags=["api"])

POLL = 0.5  # s between LIMS reads of an event stream

__all__ = [
    "approve_job",
    "cancel_job",
    "job_json",
    "listing_json",
    "recipe_json",
    "recipes_for",
    "reject_job",
    "reprocess_job",
    "router",
    "submit_job",
    "visible_job",
]


# ---------------------------------------------------------------- request bodies


class JobRequest(BaseModel):
    recipe: str = Field(description="recipe name (GET /api/recipes)")
    scan_file: str = Field(description="the scan's NeXus file, under a data root")
    parameters: dict[str, Any] = Field(default_factory=dict, description="recipe parameters")


class RejectRequest(BaseModel):
    reason: str = Field(default="", max_length=500, description="why the job is not run")


class CancelRequest(BaseModel):
    reason: str = Field(default="", max_length=500, description="why the job is cancelled")


class ReprocessRequest(BaseModel):
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="parameters to change from the original job's"
    )


# ---------------------------------------------------------------- helpers (pages use them)


def _time(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _not_found(job_id: int) -> HTTPException:
    return HTTPException(404, f"no job {job_id}")


def find_recipe_named(name: str) -> Recipe | None:
    """A recipe on the recipe path by its name (never a file path: the client names it)."""
    return next((r for r in list_recipes(errors=[]) if r.name == name), None)


def recipe_json(recipe: Recipe) -> dict[str, Any]:
    return {
        "name": recipe.name,
        "version": recipe.version,
        "description": recipe.description,
        "applies_to": recipe.applies_to.model_dump(),
        "parameters_schema": recipe.parameters_schema(),
    }


def _check_visit(user: User, visit: str | None) -> None:
    if not user.can_see(visit or LOCAL_VISIT):
        raise HTTPException(403, f"user {user.name} may not process scans of visit {visit}")


def recipes_for(
    svc: Services, user: User, beamline: str | None = None, scan: str | None = None
) -> list[Recipe]:
    """The recipes for a beamline (those without a beamline rule too) and, with a scan file,
    those that apply to it (403 for a scan outside the data roots or of another visit)."""
    found = list_recipes(errors=[])
    if beamline:
        found = [
            r for r in found if not r.applies_to.beamlines or beamline in r.applies_to.beamlines
        ]
    if scan:
        info = read_scan_info(confined(scan, svc.settings.data_roots))
        _check_visit(user, info.visit)
        found = [r for r in found if r.applies(info)[0]]
    return found


def job_visit(lims: Lims, record: JobRecord) -> str | None:
    """The visit of a job's data collection ("cm12345-1"), or None."""
    if record.dc_id is None:
        return None
    rows = find_jobs(lims, dc_id=record.dc_id, limit=1)
    return rows[0].visit if rows else None


def visible_job(lims: Lims, user: User, job_id: int) -> tuple[JobRecord, str | None]:
    """The job and its visit; 404 if it does not exist or the user may not see its visit."""
    try:
        record = lims.job(job_id)
    except LimsError:
        raise _not_found(job_id) from None
    visit = job_visit(lims, record)
    if not user.can_see(visit):
        raise _not_found(job_id)
    return record, visit


def attachment_url(job_id: int, attachment_id: int, root: str = "") -> str:
    return f"{root}/api/jobs/{job_id}/attachments/{attachment_id}"


def job_json(record: JobRecord, visit: str | None, root: str = "") -> dict[str, Any]:
    """A job as the API answers it: parameters, steps with messages and attachments. URLs
    start with ``root``, the path the service is published under."""
    approval = approval_of(record)
    return {
        "id": record.id,
        "recipe": record.recipe,
        "display_name": record.display_name,
        "comments": record.comments,
        "automatic": record.automatic,
        "created": _time(record.created),
        "status": record.status.value,
        "scan_file": str(record.scan_file) if record.scan_file else None,
        "visit": visit,
        "dc_id": record.dc_id,
        "reprocess_of": reprocess_of(record),
        "awaiting_approval": bool(approval and approval.awaiting),
        "approval": approval.text if approval else None,
        "cancelled": cancel_of(record),
        "parameters": record.parameters,
        "url": f"{root}/jobs/{record.id}",
        "events": f"{root}/api/jobs/{record.id}/events",
        "steps": [
            {
                "id": s.id,
                "step_id": s.step_id,
                "uses": s.uses,
                "status": s.status.value,
                "start": _time(s.start),
                "end": _time(s.end),
                "message": s.message,
                "environment": s.environment,
                "messages": [
                    {
                        "severity": m.severity,
                        "message": m.message,
                        "description": m.description,
                        "time": _time(m.time),
                    }
                    for m in s.messages
                ],
                "attachments": [
                    {
                        "id": a.id,
                        "file_type": a.file_type,
                        "name": a.path.name,
                        "path": str(a.path),
                        "importance_rank": a.importance_rank,
                        "time": _time(a.time),
                        "url": attachment_url(record.id, a.id, root),
                    }
                    for a in s.attachments
                ],
            }
            for s in record.steps
        ],
    }


def listing_json(row: JobListing, root: str = "") -> dict[str, Any]:
    return {
        "id": row.id,
        "recipe": row.recipe,
        "display_name": row.display_name,
        "status": row.status.value,
        "n_steps": row.n_steps,
        "step_counts": {s.value: n for s, n in row.step_counts.items()},
        "created": _time(row.created),
        "updated": _time(row.updated),
        "dc_id": row.dc_id,
        "scan_file": str(row.scan_file) if row.scan_file else None,
        "visit": row.visit,
        "beamline": row.beamline,
        "experiment_type": row.experiment_type,
        "title": row.title,
        "automatic": row.automatic,
        "cancelled": row.cancelled,
        "url": f"{root}/jobs/{row.id}",
    }


def _accepted(svc: Services, job_id: int) -> dict[str, Any]:
    root = svc.settings.root_path
    return {
        "job_id": job_id,
        "url": f"{root}/jobs/{job_id}",
        "events": f"{root}/api/jobs/{job_id}/events",
    }


def submit_job(
    svc: Services, user: User, recipe: str, scan_file: str, parameters: dict[str, Any]
) -> dict[str, Any]:
    """Check, record and start a job; the 202 answer ({job_id, url, events}).
    422 unknown recipe or bad parameters, 403 scan outside the data roots or of another visit."""
    found = find_recipe_named(recipe)
    if found is None:
        known = ", ".join(sorted(r.name for r in list_recipes(errors=[]))) or "none"
        raise InputError(f"no recipe named {recipe!r} (known: {known})")
    path = confined(scan_file, svc.settings.data_roots)
    scan = read_scan_info(path)
    _check_visit(user, scan.visit)
    from hpcproc.dispatch.plan import make_plan

    plan = make_plan(found, scan, parameters)
    sized_steps(plan, svc.settings.cluster)
    job = runner(svc).submit(plan)
    return _accepted(svc, job.job_id)


def reprocess_job(
    svc: Services, user: User, job_id: int, parameters: dict[str, Any]
) -> dict[str, Any]:
    """A new job linked to ``job_id`` (parameter hpcproc.reprocess_of) with ``parameters``
    changed; the 202 answer. 404 for a job the user may not see, 422 bad parameters."""
    record, _visit = visible_job(svc.lims, user, job_id)
    found = find_recipe_named(record.recipe)
    if found is None:
        raise InputError(f"job {job_id} ran recipe {record.recipe!r}, which is not on the path")
    if record.scan_file is not None:
        confined(record.scan_file, svc.settings.data_roots)
    (plan,) = plan_reprocessing(job_id, parameters, lims=svc.lims, recipe=found)
    sized_steps(plan.plan, svc.settings.cluster)
    job = runner(svc).submit(plan.plan, parent_job=plan.parent, display_name=plan.display_name)
    return _accepted(svc, job.job_id)


def _staff(user: User, what: str) -> None:
    if not user.staff:
        raise HTTPException(403, f"only facility staff {what}; {user.name} is not staff")


def approve_job(svc: Services, user: User, job_id: int) -> dict[str, Any]:
    """Approve a job awaiting approval and start it (same job id); the 202 answer. 403 for
    users who are not staff, 409 if the job is not awaiting approval, 422 if it cannot run."""
    _staff(user, "approve jobs")
    record, _visit = visible_job(svc.lims, user, job_id)
    if record.scan_file is not None:
        confined(record.scan_file, svc.settings.data_roots)
    found = find_recipe_named(record.recipe)
    if found is None:
        raise InputError(f"job {job_id} ran recipe {record.recipe!r}, which is not on the path")
    plan, job = approve(svc.lims, job_id, user.name, found)
    runner(svc).start(plan, job)
    return _accepted(svc, job_id)


def reject_job(svc: Services, user: User, job_id: int, reason: str) -> dict[str, Any]:
    """Reject a job awaiting approval: its steps are skipped with the reason."""
    _staff(user, "reject jobs")
    visible_job(svc.lims, user, job_id)
    reject(svc.lims, job_id, user.name, reason)
    return {"job_id": job_id, "url": f"{svc.settings.root_path}/jobs/{job_id}"}


def cancel_job(svc: Services, user: User, job_id: int, reason: str) -> dict[str, Any]:
    """Cancel a job that runs or waits to run, wherever it runs (any user of its visit); the
    202 answer. 409 if it has ended, is being cancelled or awaits approval."""
    visible_job(svc.lims, user, job_id)
    text = request_cancel(svc.lims, job_id, user.name, reason)
    return {**_accepted(svc, job_id), "cancelled": text}


def _status_event(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.id,
        "status": record.status.value,
        "steps": [
            {"step_id": s.step_id, "status": s.status.value, "message": s.message}
            for s in record.steps
        ],
    }


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


# ---------------------------------------------------------------- routes


@router.get("/me")
def me(user: User = CurrentUser) -> dict[str, Any]:
    """The user of the token."""
    return {"name": user.name, "staff": user.staff, "visits": sorted(user.visits)}


@router.get("/recipes")
def recipes(
    request: Request,
    beamline: str | None = None,
    scan: Annotated[
        str | None, Query(description="a scan file: the recipes that apply to it")
    ] = None,
    user: User = CurrentUser,
) -> list[dict[str, Any]]:
    """The recipes, for a beamline and/or a scan file."""
    return [recipe_json(r) for r in recipes_for(services(request), user, beamline, scan)]


@router.get("/recipes/{name}")
def recipe(name: str, user: User = CurrentUser) -> dict[str, Any]:
    """One recipe, with the JSON Schema of its parameters."""
    found = find_recipe_named(name)
    if found is None:
        raise HTTPException(404, f"no recipe named {name!r}")
    return recipe_json(found)


@router.post("/jobs", status_code=202)
def submit(body: JobRequest, request: Request, user: User = CurrentUser) -> dict[str, Any]:
    """Run a recipe on a scan: recorded now, run in the background."""
    return submit_job(services(request), user, body.recipe, body.scan_file, body.parameters)


@router.post("/jobs/{job_id}/reprocess", status_code=202)
def reprocess(
    job_id: int, body: ReprocessRequest, request: Request, user: User = CurrentUser
) -> dict[str, Any]:
    """Run a job's recipe again on its scan with some parameters changed (a linked new job)."""
    return reprocess_job(services(request), user, job_id, body.parameters)


@router.post("/jobs/{job_id}/approve", status_code=202)
def approve_route(job_id: int, request: Request, user: User = CurrentUser) -> dict[str, Any]:
    """Staff: run a job that awaits approval (a recipe with ``needs_approval`` the launcher
    started); it runs under the same job id."""
    return approve_job(services(request), user, job_id)


@router.post("/jobs/{job_id}/reject")
def reject_route(
    job_id: int, request: Request, body: RejectRequest | None = None, user: User = CurrentUser
) -> dict[str, Any]:
    """Staff: do not run a job that awaits approval; its steps are skipped with the reason."""
    return reject_job(services(request), user, job_id, body.reason if body else "")


@router.post("/jobs/{job_id}/cancel", status_code=202)
def cancel_route(
    job_id: int, request: Request, body: CancelRequest | None = None, user: User = CurrentUser
) -> dict[str, Any]:
    """Cancel a running or queued job: its running steps fail with the reason (what they made
    is kept), the others are skipped. The job's process acts on it within about a second."""
    return cancel_job(services(request), user, job_id, body.reason if body else "")


@router.get("/jobs/{job_id}")
def job(job_id: int, request: Request, user: User = CurrentUser) -> dict[str, Any]:
    """A job with its parameters, steps, messages and attachments."""
    record, visit = visible_job(services(request).lims, user, job_id)
    return job_json(record, visit, root(request))


@router.get("/visits/{visit}/jobs")
def visit_jobs(
    visit: str,
    request: Request,
    recipe: str | None = None,
    technique: str | None = None,
    search: str | None = None,
    state: Annotated[list[str] | None, Query(description="overall status (repeatable)")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    user: User = CurrentUser,
) -> list[dict[str, Any]]:
    """The jobs of a visit ("cm12345-1", or "cm12345": every session), newest first."""
    if not user.can_see(visit):
        raise HTTPException(404, f"no visit {visit}")
    try:
        rows = find_jobs(
            services(request).lims,
            visit=visit,
            recipe=recipe or None,
            technique=technique or None,
            sample_or_title=search or None,
            since=since,
            until=until,
            status=state or None,
            limit=limit,
        )
    except LimsError as exc:
        raise InputError(str(exc)) from None  # a malformed visit or status: 422
    return [listing_json(r, root(request)) for r in rows]


@router.get(
    "/jobs/{job_id}/attachments/{attachment_id}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def attachment(
    job_id: int, attachment_id: int, request: Request, user: User = CurrentUser
) -> FileResponse:
    """A file a step of the job wrote (only from under the data roots)."""
    svc = services(request)
    record, _visit = visible_job(svc.lims, user, job_id)
    found = next((a for s in record.steps for a in s.attachments if a.id == attachment_id), None)
    if found is None:
        raise HTTPException(404, f"job {job_id} has no attachment {attachment_id}")
    real = confined(found.path, svc.settings.data_roots)
    if not real.is_file():
        raise HTTPException(404, f"attachment {attachment_id} ({found.path.name}) is gone")
    return FileResponse(real, filename=found.path.name)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(job_id: int, request: Request, user: User = CurrentUser) -> StreamingResponse:
    """Server-sent events: ``status`` (steps' statuses and progress) whenever it changes, then
    ``end`` once every step is final; the stream then closes."""
    lims = services(request).lims
    record, _visit = await run_in_threadpool(visible_job, lims, user, job_id)

    async def stream() -> AsyncIterator[str]:
        current, last = record, None
        while True:
            data = _status_event(current)
            if data != last:
                last = data
                yield _sse("status", data)
            if current.steps and all(s.status.final for s in current.steps):
                yield _sse("end", data)
                return
            await asyncio.sleep(POLL)
            if await request.is_disconnected():
                return
            try:
                current = await run_in_threadpool(lims.job, job_id)
            except HpcprocError as exc:
                yield _sse("error", {"job_id": job_id, "detail": str(exc)})
                return

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
