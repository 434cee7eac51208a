"""Read-only LIMS queries for the CLI and the web pages: visits, look-ups and search.

Every function takes a :class:`~hpcproc.lims.Lims` (or its SQLAlchemy ``Engine``) and reads only.
Job lists are :class:`JobListing` rows, newest job first, each with its overall status
(:func:`hpcproc.lims.records.overall_status` of its steps) computed from per-status step counts
that the database aggregates: a list costs two queries whatever its length (the page, then one
``GROUP BY`` over the steps of the jobs on it), or one when filtering on status (the counts are
then joined in, restricted to the jobs the other filters select).

Visits are matched as :func:`hpcproc.lims.record_scan <hpcproc.lims.Lims.record_scan>` stores
them: ``"cm12345-1"`` is Proposal ``cm``/``12345``, BLSession ``visit_number`` 1; a visit given
without a session number (``"cm12345"``) matches every session of the proposal. A job belongs
to the visit of its data collection's group (``DataCollectionGroup.sessionId``).

Times are naive local times, as stored (aware datetimes given as ``since``/``until`` are
converted); ``since``/``until`` select on the job's creation time (``since <= t < until``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import ispyb.sqlalchemy as isp
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from hpcproc.errors import LimsError
from hpcproc.job_keys import CANCEL
from hpcproc.lims.adapter import Lims, _naive, _scan_file
from hpcproc.lims.records import JobSummary, overall_status
from hpcproc.status import Status

__all__ = [
    "JobListing",
    "data_collection_for_file",
    "find_jobs",
    "jobs_for_data_collection",
    "visit_jobs",
]

_PJ = isp.ProcessingJob
_DC = isp.DataCollection
_DCG = isp.DataCollectionGroup
_S = isp.BLSession
_PR = isp.Proposal
_APP = isp.AutoProcProgram
_SAMPLE = isp.BLSample
_VISIT = re.compile(r"^\s*([A-Za-z]+)(\d+)(?:-(\d+))?\s*$")
_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True)
class JobListing:
    """A job in a list: what it ran on, where and when, and its overall status."""

    id: int
    recipe: str
    status: Status  # overall status of its steps
    n_steps: int
    step_counts: dict[Status, int]  # steps per status (statuses with no step left out)
    created: datetime | None
    updated: datetime | None  # latest start or end time of its steps (None: none started)
    dc_id: int | None
    scan_file: Path | None
    visit: str | None  # e.g. "cm12345-1"
    beamline: str | None
    experiment_type: str | None  # DataCollectionGroup.experimentType ("XRF map", ...)
    title: str  # DataCollection.comments: the scan's title and command
    display_name: str = ""
    automatic: bool = False
    cancelled: bool = False  # someone cancelled it (hpcproc.cancel)

    def summary(self) -> JobSummary:
        """The same job as a line of :meth:`Lims.jobs`."""
        return JobSummary(
            id=self.id,
            recipe=self.recipe,
            scan_file=self.scan_file,
            created=self.created,
            status=self.status,
            n_steps=self.n_steps,
        )


# ---------------------------------------------------------------- plumbing

_T = TypeVar("_T")
_PS = ParamSpec("_PS")


def _masked(source: Lims | Engine) -> str:
    if isinstance(source, Lims):
        return source.url
    return source.url.render_as_string(hide_password=True)


def _query(fn: Callable[_PS, _T]) -> Callable[_PS, _T]:
    """Database errors become one-line LimsErrors (password masked), as in the adapter."""

    @functools.wraps(fn)
    def wrapper(*args: _PS.args, **kwargs: _PS.kwargs) -> _T:
        try:
            return fn(*args, **kwargs)
        except SQLAlchemyError as exc:
            source = args[0]
            if isinstance(source, Lims):
                raise source._error(f"{fn.__name__} failed", exc) from None
            detail = " ".join(str(getattr(exc, "orig", None) or exc).split())
            password = source.url.password  # type: ignore[union-attr]
            if password:
                detail = detail.replace(str(password), "***")
            raise LimsError(f"{fn.__name__} failed ({_masked(source)}): {detail}") from None

    return wrapper


@contextmanager
def _connect(source: Lims | Engine) -> Iterator[Connection]:
    if isinstance(source, Lims):
        with source._read() as conn:
            yield conn
    elif isinstance(source, Engine):
        with source.connect() as conn:
            yield conn
    else:
        raise TypeError(f"expected a Lims or an Engine, got {type(source).__name__}")


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def _visit_filter(visit: str) -> ColumnElement[bool]:
    m = _VISIT.match(visit or "")
    if not m:
        raise LimsError(f"visit {visit!r} is not like 'cm12345-1' (proposal code, number, session)")
    conds = [_PR.proposalCode == m.group(1), _PR.proposalNumber == m.group(2)]
    if m.group(3) is not None:
        conds.append(_S.visit_number == int(m.group(3)))
    return and_(*conds)


def _statuses(status: Status | str | Iterable[Status | str]) -> list[Status]:
    items = [status] if isinstance(status, str) else list(status)
    try:
        return [Status(s) for s in items]
    except ValueError:
        known = ", ".join(s.value for s in Status)
        raise LimsError(f"status {status!r} is not one of {known}") from None


# Per-job step counts, as the database aggregates them (the encoding of adapter.py).
_CODE, _START = _APP.processingStatus, _APP.processingStartTime


def _count(cond: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)


_COUNTS = {
    Status.QUEUED: _count(and_(_CODE.is_(None), _START.is_(None))),
    Status.RUNNING: _count(and_(_CODE.is_(None), _START.is_not(None))),
    Status.SUCCESS: _count(and_(_CODE.is_not(None), _CODE != 0)),
    Status.FAILED: _count(and_(_CODE == 0, _START.is_not(None))),
    Status.SKIPPED: _count(and_(_CODE == 0, _START.is_(None))),
}


def _aggregate() -> Select[Any]:
    return select(
        _APP.processingJobId.label("job_id"),
        func.count(_APP.autoProcProgramId).label("n"),
        *(expr.label(f"n_{s.value}") for s, expr in _COUNTS.items()),
        func.max(_APP.processingStartTime).label("last_start"),
        func.max(_APP.processingEndTime).label("last_end"),
    ).group_by(_APP.processingJobId)


def _status_sql(agg: Any) -> Any:
    """:func:`overall_status` in SQL, on the columns of :func:`_aggregate` (NULL: no step)."""
    n = func.coalesce(agg.c.n, 0)
    queued = func.coalesce(agg.c.n_queued, 0)
    return case(
        (func.coalesce(agg.c.n_failed, 0) > 0, literal(Status.FAILED.value)),
        (func.coalesce(agg.c.n_running, 0) > 0, literal(Status.RUNNING.value)),
        (queued == n, literal(Status.QUEUED.value)),  # also: no step at all
        (queued > 0, literal(Status.RUNNING.value)),
        (func.coalesce(agg.c.n_skipped, 0) == n, literal(Status.SKIPPED.value)),
        else_=literal(Status.SUCCESS.value),
    )


# Whether the job was cancelled (hpcproc.cancel): a column of the listing, not a query more.
_CANCELLED = (
    exists()
    .where(
        isp.ProcessingJobParameter.processingJobId == _PJ.processingJobId,
        isp.ProcessingJobParameter.parameterKey == CANCEL,
    )
    .label("cancelled")
)

_JOB_COLUMNS = (
    _CANCELLED,
    _PJ.processingJobId,
    _PJ.recipe,
    _PJ.displayName,
    _PJ.automatic,
    _PJ.recordTimestamp,
    _PJ.dataCollectionId,
    _DC.imageDirectory,
    _DC.fileTemplate,
    _DC.comments,
    _DCG.experimentType,
    _PR.proposalCode,
    _PR.proposalNumber,
    _S.visit_number,
    _S.beamLineName,
)


def _joined(sample: bool) -> Any:
    j = (
        _PJ.__table__.outerjoin(_DC.__table__, _DC.dataCollectionId == _PJ.dataCollectionId)
        .outerjoin(_DCG.__table__, _DCG.dataCollectionGroupId == _DC.dataCollectionGroupId)
        .outerjoin(_S.__table__, _S.sessionId == _DCG.sessionId)
        .outerjoin(_PR.__table__, _PR.proposalId == _S.proposalId)
    )
    if sample:
        j = j.outerjoin(_SAMPLE.__table__, _SAMPLE.blSampleId == _DC.BLSAMPLEID)
    return j


def _listing(row: Any, counts: dict[Status, int], last: tuple[Any, Any]) -> JobListing:
    visit = None
    if row.proposalCode is not None:
        visit = f"{row.proposalCode}{row.proposalNumber}-{row.visit_number}"
    times = [t for t in last if t is not None]
    counts = {s: int(n) for s, n in counts.items() if n}
    return JobListing(
        id=int(row.processingJobId),
        recipe=row.recipe or "",
        status=overall_status(counts),
        n_steps=sum(counts.values()),
        step_counts=counts,
        created=row.recordTimestamp,
        updated=max(times) if times else None,
        dc_id=row.dataCollectionId,
        scan_file=_scan_file(row.imageDirectory, row.fileTemplate),
        visit=visit,
        beamline=row.beamLineName,
        experiment_type=row.experimentType,
        title=row.comments or "",
        display_name=row.displayName or "",
        automatic=bool(row.automatic),
        cancelled=bool(row.cancelled),
    )


# ---------------------------------------------------------------- queries


@_query
def find_jobs(
    lims: Lims | Engine,
    *,
    visit: str | None = None,
    recipe: str | None = None,
    technique: str | None = None,
    sample_or_title: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    status: Status | str | Iterable[Status | str] | None = None,
    dc_id: int | None = None,
    limit: int | None = 100,
) -> list[JobListing]:
    """Jobs matching every given filter, newest first, at most ``limit`` (None: all).

    - ``visit``: ``"cm12345-1"`` (one session) or ``"cm12345"`` (every session of the proposal);
    - ``recipe``: the recipe name, exactly;
    - ``technique``: ISPyB's DataCollectionGroup.experimentType, exactly (``"XRF map"``);
    - ``sample_or_title``: a case-insensitive substring of the scan's title and command
      (DataCollection.comments), its scan id (DataCollectionGroup.comments) or its sample's
      name (BLSample.name, where ISPyB links one);
    - ``since``/``until``: the job's creation time, ``since <= created < until``;
    - ``status``: overall status, one or several (``"failed"``, ``[Status.RUNNING, ...]``);
    - ``dc_id``: the jobs of one data collection.
    """
    conds: list[ColumnElement[bool]] = []
    if visit is not None:
        conds.append(_visit_filter(visit))
    if recipe is not None:
        conds.append(_PJ.recipe == recipe)
    if technique is not None:
        conds.append(_DCG.experimentType == technique)
    if sample_or_title:
        text = sample_or_title.strip()
        conds.append(
            or_(
                _DC.comments.icontains(text, autoescape=True),
                _DCG.comments.icontains(text, autoescape=True),
                _SAMPLE.name.icontains(text, autoescape=True),
            )
        )
    if since is not None:
        conds.append(_PJ.recordTimestamp >= _naive(since))
    if until is not None:
        conds.append(_PJ.recordTimestamp < _naive(until))
    if dc_id is not None:
        conds.append(_PJ.dataCollectionId == int(dc_id))
    wanted = _statuses(status) if status is not None else None
    if limit is not None and int(limit) <= 0:
        return []
    joined = _joined(sample=bool(sample_or_title))

    with _connect(lims) as conn:
        if wanted is None:
            # The page first, then the step counts of its jobs: two queries.
            page = select(*_JOB_COLUMNS).select_from(joined).where(*conds)
            page = page.order_by(_PJ.processingJobId.desc())
            if limit is not None:
                page = page.limit(int(limit))
            rows = conn.execute(page).all()
            agg_rows: dict[int, Any] = {}
            ids = [int(r.processingJobId) for r in rows]
            for chunk in _chunks(ids):
                for a in conn.execute(_aggregate().where(_APP.processingJobId.in_(chunk))):
                    agg_rows[int(a.job_id)] = a
            pairs = [(r, agg_rows.get(int(r.processingJobId))) for r in rows]
        else:
            # Filtering on the overall status: the counts of the candidate jobs joined in.
            candidates = select(_PJ.processingJobId).select_from(joined).where(*conds)
            agg = _aggregate().where(_APP.processingJobId.in_(candidates)).subquery("agg")
            page = (
                select(*_JOB_COLUMNS, *agg.c)
                .select_from(joined.outerjoin(agg, agg.c.job_id == _PJ.processingJobId))
                .where(*conds, _status_sql(agg).in_([s.value for s in wanted]))
                .order_by(_PJ.processingJobId.desc())
            )
            if limit is not None:
                page = page.limit(int(limit))
            rows = conn.execute(page).all()
            pairs = [(r, r if r.job_id is not None else None) for r in rows]

    out = []
    for row, a in pairs:
        counts = {s: (getattr(a, f"n_{s.value}") if a is not None else 0) for s in Status}
        last = (a.last_start, a.last_end) if a is not None else (None, None)
        out.append(_listing(row, counts, last))
    return out


def visit_jobs(lims: Lims | Engine, visit: str, limit: int | None = None) -> list[JobListing]:
    """Every job of a visit (``"cm12345-1"``; ``"cm12345"``: all its sessions), newest first."""
    return find_jobs(lims, visit=visit, limit=limit)


def jobs_for_data_collection(
    lims: Lims | Engine, dc_id: int, limit: int | None = None
) -> list[JobListing]:
    """Every job run on one data collection (the first run and reprocessings), newest first."""
    return find_jobs(lims, dc_id=dc_id, limit=limit)


@_query
def data_collection_for_file(lims: Lims | Engine, path: Path | str) -> int | None:
    """The DataCollection id recorded for a scan file (the oldest if several), or None.

    The path is matched as recorded (directory + file name); a relative path is also tried
    made absolute, and with symbolic links resolved.
    """
    given = Path(path).expanduser()
    candidates = {given, given.absolute()}
    with suppress(OSError):
        candidates.add(given.resolve())
    conds = [
        and_(
            _DC.imageDirectory == str(p.parent).rstrip("/") + "/",
            _DC.fileTemplate == p.name,
        )
        for p in sorted(candidates, key=str)
        if p.name
    ]
    if not conds:
        return None
    with _connect(lims) as conn:
        found = conn.execute(
            select(_DC.dataCollectionId).where(or_(*conds)).order_by(_DC.dataCollectionId).limit(1)
        ).scalar()
    return int(found) if found is not None else None
