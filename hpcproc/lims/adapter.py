"""The LIMS adapter: scans, jobs and step statuses recorded in ISPyB through its own ORM models.

``Lims(url)`` works on an embedded SQLite file (the default, see :func:`default_lims_url`) and on
a real ISPyB database on MariaDB/MySQL (``mysql+mysqlconnector://user:pw@host/ispyb``). Each
call is one short transaction; calls from several threads of one process are safe.

How hpcproc's words map onto ISPyB:

- a scan file is a DataCollection (``imageDirectory`` = its directory with a trailing slash,
  ``fileTemplate`` = its file name; that pair identifies the scan, so recording it twice gives
  the same id) in a DataCollectionGroup of its own, in the BLSession of the scan's visit
  (``"cm12345-1"`` -> Proposal ``cm`` ``12345``, session ``visit_number`` 1; created when
  missing). A scan without a visit goes to the *local visit* ``local0-1`` (:data:`LOCAL_VISIT`).
- a job (one run of a recipe on a scan) is a ProcessingJob (``recipe`` = recipe name) with one
  ProcessingJobParameter per parameter;
- a step of a job is an AutoProcProgram: ``processingPrograms`` = the step type (``uses``, e.g.
  ``xrd_integrate``), ``processingCommandLine`` = the step id (``step_id``, e.g. ``integrate``).

Step status encoding (``processingStatus``, ``processingStartTime``):

======== ================= ===================
status   processingStatus  processingStartTime
======== ================= ===================
queued   NULL              NULL
running  NULL              set
success  1                 set
failed   0                 set
skipped  0                 NULL (a skipped step never started)
======== ================= ===================

Only forward moves (:func:`hpcproc.status.can_move`) are applied, by a compare-and-set update,
so replayed or late updates never move a step back, even from several processes. A running
step that is then skipped loses its start time (the encoding needs it NULL); the start is kept
in an INFO message.

Times are stored as naive local times (ISPyB's convention); aware datetimes are converted.
MariaDB's DATETIME keeps whole seconds only.

Parameters are stored JSON-encoded, except strings that JSON could not mistake for another
value (``"/data/cal.poni"`` is stored as is, ``"2000"`` as ``"\\"2000\\""``), so they come back
with their types. A job's overall status is :func:`hpcproc.lims.records.overall_status`.

Schema: ``Lims`` creates the tables it writes plus every table their foreign keys reach (43 of
ISPyB's 205, see :func:`schema_tables`) when they are missing; an existing ISPyB database is used
as it is, once :mod:`hpcproc.lims.schema_check` found the columns it uses (else a one-line
LimsError). Foreign keys are enforced on SQLite too (as on MariaDB). SQLite runs in WAL mode with
``synchronous=NORMAL`` so readers (CLI, web) never wait for the writer; writers of one process
are serialised by a lock, writers of several processes by SQLite's own lock (30 s timeout).
``record_scan`` is look-up-or-insert under a process lock: two *processes* recording the same
new scan at the same instant on MariaDB could create two DataCollections (ISPyB has no unique
key on the path); the oldest is the one returned afterwards.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, ParamSpec, TypeVar

import ispyb.sqlalchemy as isp
from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from hpcproc.errors import LimsError
from hpcproc.lims import sqlite_compat  # noqa: F401  (registers the SQLite compile rules)
from hpcproc.lims.records import (
    AttachmentRecord,
    JobRecord,
    JobSummary,
    MessageRecord,
    ProgramRecord,
    overall_status,
)
from hpcproc.lims.schema_check import SchemaReport, ensure_schema
from hpcproc.scaninfo import ScanInfo
from hpcproc.status import Status

__all__ = [
    "ATTACHMENT_TYPES",
    "DEFAULT_EXPERIMENT_TYPE",
    "LOCAL_VISIT",
    "SEVERITIES",
    "Lims",
    "default_lims_url",
    "parse_visit",
]

ENV_URL = "HPCPROC_LIMS_URL"
LOCAL_VISIT = "local0-1"  # where scans without a visit are recorded
DEFAULT_EXPERIMENT_TYPE = "experiment"
SEVERITIES = ("ERROR", "WARNING", "INFO")
ATTACHMENT_TYPES = ("Log", "Result", "Graph", "Debug", "Input")
RUN_FINISHED = "DataCollection Successful"
RUN_RUNNING = "running"
PERSON_LOGIN = "hpcproc"

_P = isp.AutoProcProgram
_APP = _P.__table__
_VISIT = re.compile(r"^([A-Za-z]+)(\d+)(?:-(\d+))?$")

# The tables hpcproc writes; create_all also creates every table their foreign keys reach.
_WRITTEN = (
    isp.Person,
    isp.Proposal,
    isp.BLSession,
    isp.DataCollectionGroup,
    isp.DataCollection,
    isp.ProcessingJob,
    isp.ProcessingJobParameter,
    isp.AutoProcProgram,
    isp.AutoProcProgramMessage,
    isp.AutoProcProgramAttachment,
)


def default_lims_url(home: Path | str) -> str:
    """``sqlite:///{home}/lims.sqlite``, unless the environment variable HPCPROC_LIMS_URL is set."""
    env = os.environ.get(ENV_URL)
    if env:
        return env
    return f"sqlite:///{Path(home).expanduser()}/lims.sqlite"


def parse_visit(visit: str | None) -> tuple[str, str, int]:
    """``"cm12345-1"`` -> ``("cm", "12345", 1)``; None -> the local visit; no number -> 1."""
    m = _VISIT.match((visit or LOCAL_VISIT).strip())
    if not m:
        raise LimsError(f"visit {visit!r} is not like 'cm12345-1' (proposal code, number, session)")
    return m.group(1), m.group(2), int(m.group(3) or 1)


def schema_tables() -> list[Any]:
    """The ISPyB tables the adapter needs: those it writes and all their foreign keys reach."""
    tables: dict[str, Any] = {}
    todo = [model.__table__ for model in _WRITTEN]
    while todo:
        table = todo.pop()
        if table.name in tables:
            continue
        tables[table.name] = table
        todo.extend(fk.column.table for fk in table.foreign_keys)
    return list(tables.values())


# ---------------------------------------------------------------- helpers


def _naive(t: datetime | None) -> datetime | None:
    """A naive local time (aware times are converted to local time)."""
    if t is None or t.tzinfo is None:
        return t
    return t.astimezone().replace(tzinfo=None)


def _now() -> datetime:
    return datetime.now()


def _cut(text: str | None, size: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= size else text[: size - 3] + "..."


def _size(column: Any) -> int:
    return int(column.type.length)


def _json_default(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    for attr in ("tolist", "item"):  # numpy arrays and scalars
        if hasattr(value, attr):
            return getattr(value, attr)()
    return str(value)


def encode_parameter(value: Any) -> str:
    """A parameter value as stored: JSON, except strings that JSON would not mistake for a value.

    A string is stored as itself unless it parses as JSON ("2000", "true", "[1]"): then it is
    stored JSON-encoded, so :func:`decode_parameter` gives back exactly a str. Paths are strings.
    """
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
        return json.dumps(value)
    return json.dumps(value, default=_json_default)


def decode_parameter(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _status_of(processing_status: int | None, start: datetime | None) -> Status:
    if processing_status is None:
        return Status.QUEUED if start is None else Status.RUNNING
    if processing_status:
        return Status.SUCCESS
    return Status.FAILED if start is not None else Status.SKIPPED


def _scan_file(directory: str | None, template: str | None) -> Path | None:
    if not directory or not template:
        return None
    return Path(directory) / template


def _load_json_dict(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def fit_json(env: Mapping[str, Any], size: int) -> tuple[str, dict[str, Any]]:
    """Compact JSON of the items of ``env`` that fit in ``size`` characters (in order, greedy)."""
    kept: dict[str, Any] = {}
    text = "{}"
    for key, value in env.items():
        trial = {**kept, str(key): value}
        candidate = json.dumps(trial, separators=(",", ":"), default=_json_default)
        if len(candidate) <= size:
            kept, text = trial, candidate
    return text, kept


_T = TypeVar("_T")
_PS = ParamSpec("_PS")


def _db_call(method: Callable[_PS, _T]) -> Callable[_PS, _T]:
    """Turn database errors into one-line LimsErrors that never show credentials."""

    @functools.wraps(method)
    def wrapper(*args: _PS.args, **kwargs: _PS.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as exc:
            self = args[0]
            raise self._error(f"{method.__name__} failed", exc) from None

    return wrapper


class _FileLock:
    """An exclusive lock on a file (other processes wait), inside a thread lock."""

    def __init__(self, path: Path, inner: Any) -> None:
        self.path, self.inner = path, inner

    def __enter__(self) -> None:
        self.inner.__enter__()
        self.file = open(self.path, "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        self.inner.__exit__(*exc)


# ---------------------------------------------------------------- the adapter


class Lims:
    """Records scans, jobs and step statuses in an ISPyB database (SQLite or MariaDB/MySQL)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        if isinstance(url, os.PathLike):
            url = f"sqlite:///{Path(url)}"
        try:
            self._url: URL = make_url(url)
        except ArgumentError:
            raise LimsError("LIMS URL is not a URL like sqlite:///path/lims.sqlite") from None
        self.url = self._url.render_as_string(hide_password=True)  # safe to show
        self._sqlite = self._url.get_backend_name() == "sqlite"
        try:
            self._engine = self._make_engine()
        except (ImportError, ArgumentError) as exc:
            raise LimsError(
                f"cannot use LIMS URL {self.url}: {exc} (for MariaDB/MySQL install "
                "hpcproc[mysql] and use mysql+mysqlconnector://user:password@host/database)"
            ) from None
        self._session = sessionmaker(self._engine, expire_on_commit=False)
        # SQLite has one writer at a time: serialise this process's writers here rather than
        # have them wait on the file lock; an in-memory database shares one connection, so its
        # readers are serialised too.
        self._write_lock: Any = threading.RLock() if self._sqlite else nullcontext()
        self._read_lock: Any = self._write_lock if self._memory else nullcontext()
        self._scan_lock = threading.RLock()  # record_scan's look-up-or-insert
        self._batch = threading.local()  # .conn: this thread's open batch() transaction
        try:
            self._create_schema()
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise self._error("cannot open the LIMS database", exc) from None
        except LimsError:
            self._engine.dispose()
            raise

    # ------------------------------------------------------------ plumbing

    @property
    def _memory(self) -> bool:
        database = self._url.database or ""
        return self._sqlite and (database in ("", ":memory:") or "mode=memory" in database)

    def _make_engine(self) -> Engine:
        if not self._sqlite:
            return create_engine(self._url, pool_pre_ping=True, pool_recycle=3600)
        connect_args = {"check_same_thread": False, "timeout": 30}
        if self._memory:
            engine = create_engine(self._url, connect_args=connect_args, poolclass=StaticPool)
        else:
            Path(self._url.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(self._url, connect_args=connect_args)

        memory = self._memory

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if not memory:
                # WAL: the CLI and the web pages read while a run writes.
                cursor.execute("PRAGMA journal_mode=WAL")
                # NORMAL is safe in WAL mode (never corrupts; a power cut may lose the last
                # commits, a crash of the process loses nothing).
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")  # as on MariaDB
            cursor.close()

        return engine

    def _create_schema(self) -> None:
        """Check the schema (creating it on an empty database): see :mod:`.schema_check`.
        Processes opening a new SQLite file at once take turns (a lock file beside it)."""
        lock: Any = self._write_lock
        if self._sqlite and not self._memory:
            lock = _FileLock(Path(f"{self._url.database}.schema-lock").expanduser(), lock)
        self.schema: SchemaReport = ensure_schema(self._engine, self.url, lock)

    def _error(self, what: str, exc: BaseException) -> LimsError:
        detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        text = " ".join(str(detail).split())
        if self._url.password:
            text = text.replace(str(self._url.password), "***")
        return LimsError(f"{what} ({self.url}): {text}")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the writes this thread makes inside share one transaction, committed at
        the end (all or none: an exception rolls every one of them back).

        One commit is one fsync on MariaDB, which caps single-transaction writes at the server's
        commit rate; a batch pays it once. Used by the durable outbox to apply queued writes.
        """
        if getattr(self._batch, "conn", None) is not None:
            yield  # nested: part of the outer batch
            return
        with self._scan_lock, self._write_lock, self._engine.begin() as conn:
            self._batch.conn = conn
            try:
                yield
            finally:
                self._batch.conn = None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One short write transaction (committed on exit), or the open batch's."""
        conn = getattr(self._batch, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._write_lock, self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _orm(self) -> Iterator[Session]:
        """An ORM session in a write transaction of its own, or in the open batch's."""
        conn = getattr(self._batch, "conn", None)
        if conn is None:
            with self._write_lock, self._session.begin() as s:
                yield s
            return
        with Session(bind=conn, expire_on_commit=False) as s:
            yield s
            s.flush()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._read_lock, self._engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Lims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lims({self.url!r})"

    # ------------------------------------------------------------ scans

    @_db_call
    def record_scan(self, scan: ScanInfo, experiment_type: str | None = None) -> int:
        """The DataCollection id of a scan file, recorded (with its visit) if new.

        Recording the same file again returns the same id and updates its end time, number of
        images and run status (a finished scan never goes back to "running").
        ``experiment_type`` is ISPyB's DataCollectionGroup.experimentType (default "experiment").
        """
        experiment = experiment_type or DEFAULT_EXPERIMENT_TYPE
        allowed = isp.DataCollectionGroup.__table__.c.experimentType.type.enums
        if experiment not in allowed:
            raise LimsError(f"experiment type {experiment!r} is not one of ISPyB's: {allowed}")
        code, number, visit_number = parse_visit(scan.visit)
        path = Path(scan.path)
        directory = str(path.parent).rstrip("/") + "/"
        template = path.name
        DC = isp.DataCollection
        if len(directory) > _size(DC.imageDirectory) or len(template) > _size(DC.fileTemplate):
            raise LimsError(f"scan path too long for ISPyB (255 characters at most): {path}")
        start, end = _naive(scan.start_time), _naive(scan.end_time)
        run_status = RUN_FINISHED if scan.finished else RUN_RUNNING
        comments = " | ".join(x for x in (scan.title, scan.scan_command) if x)

        with self._scan_lock, self._orm() as s:
            dc = s.scalars(
                select(DC)
                .where(DC.imageDirectory == directory, DC.fileTemplate == template)
                .order_by(DC.dataCollectionId)
                .limit(1)
            ).first()
            if dc is not None:
                if end is not None:
                    dc.endTime = end
                if dc.startTime is None and start is not None:
                    dc.startTime = start
                if dc.runStatus != RUN_FINISHED:
                    dc.runStatus = run_status
                dc.numberOfImages = max(dc.numberOfImages or 0, scan.n_points)
                group = s.get(isp.DataCollectionGroup, dc.dataCollectionGroupId)
                if group is not None and end is not None:
                    group.endTime = end
                return int(dc.dataCollectionId)

            session_id = self._visit_session(s, code, number, visit_number, scan, start)
            group = isp.DataCollectionGroup(
                sessionId=session_id,
                experimentType=experiment,
                startTime=start,
                endTime=end,
                comments=_cut(scan.scan_id, 1024),
                scanParameters=json.dumps(
                    {
                        "scan_id": scan.scan_id,
                        "beamline": scan.beamline,
                        "shape": list(scan.shape),
                        "axes": list(scan.axes),
                    }
                ),
            )
            s.add(group)
            s.flush()
            dc = DC(
                dataCollectionGroupId=group.dataCollectionGroupId,
                SESSIONID=session_id,
                imageDirectory=directory,
                fileTemplate=template,
                imagePrefix=_cut(path.stem, _size(DC.imagePrefix)),
                numberOfImages=scan.n_points,
                startTime=start,
                endTime=end,
                runStatus=run_status,
                comments=_cut(comments, _size(DC.comments)),
            )
            s.add(dc)
            s.flush()
            return int(dc.dataCollectionId)

    def _visit_session(
        self,
        s: Session,
        code: str,
        number: str,
        visit_number: int,
        scan: ScanInfo,
        start: datetime | None,
    ) -> int:
        """The BLSession id of a visit, created (with its Proposal and a Person) when missing."""
        proposal = s.scalars(
            select(isp.Proposal)
            .where(isp.Proposal.proposalCode == code, isp.Proposal.proposalNumber == number)
            .order_by(isp.Proposal.proposalId)
            .limit(1)
        ).first()
        if proposal is None:
            person_id = s.scalars(
                select(isp.Person.personId)
                .where(isp.Person.login == PERSON_LOGIN)
                .order_by(isp.Person.personId)
                .limit(1)
            ).first()
            if person_id is None:
                person = isp.Person(login=PERSON_LOGIN, familyName="hpcproc", givenName="auto")
                s.add(person)
                s.flush()
                person_id = person.personId
            local = f"{code}{number}-{visit_number}" == LOCAL_VISIT
            proposal = isp.Proposal(
                personId=person_id,
                proposalCode=code,
                proposalNumber=number,
                title="hpcproc local visit" if local else None,
            )
            s.add(proposal)
            s.flush()
        session = s.scalars(
            select(isp.BLSession)
            .where(
                isp.BLSession.proposalId == proposal.proposalId,
                isp.BLSession.visit_number == visit_number,
            )
            .order_by(isp.BLSession.sessionId)
            .limit(1)
        ).first()
        if session is None:
            session = isp.BLSession(
                proposalId=proposal.proposalId,
                visit_number=visit_number,
                beamLineName=_cut(scan.beamline, 45),
                startDate=start,
            )
            s.add(session)
            s.flush()
        return int(session.sessionId)

    # ------------------------------------------------------------ jobs and steps
    # The hot paths use SQLAlchemy Core on the models' tables: ~3x faster than ORM units of work.
    # Foreign keys are enforced on both backends, so a missing parent is an IntegrityError.

    @_db_call
    def create_job(
        self,
        dc_id: int,
        recipe: str,
        parameters: Mapping[str, Any],
        *,
        display_name: str = "",
        comments: str = "",
        automatic: bool = False,
    ) -> int:
        """A ProcessingJob for a recipe on a data collection, with its parameters."""
        PJ, PJP = isp.ProcessingJob, isp.ProcessingJobParameter
        encoded: list[dict[str, str]] = []
        for key, value in parameters.items():
            key = str(key)
            if len(key) > _size(PJP.parameterKey):
                raise LimsError(f"parameter name too long for ISPyB (80 characters): {key!r}")
            text = encode_parameter(value)
            if len(text) > _size(PJP.parameterValue):
                raise LimsError(
                    f"parameter {key!r} too long for ISPyB: {len(text)} characters "
                    f"encoded, {_size(PJP.parameterValue)} at most"
                )
            encoded.append({"parameterKey": key, "parameterValue": text})
        try:
            with self._write() as conn:
                job_id = conn.execute(
                    insert(PJ.__table__).values(
                        dataCollectionId=dc_id,
                        recipe=_cut(recipe, _size(PJ.recipe)),
                        displayName=_cut(display_name, _size(PJ.displayName)),
                        comments=_cut(comments, _size(PJ.comments)),
                        automatic=1 if automatic else 0,
                        recordTimestamp=_now(),
                    )
                ).inserted_primary_key[0]
                if encoded:
                    conn.execute(
                        insert(PJP.__table__),
                        [{"processingJobId": job_id, **row} for row in encoded],
                    )
        except IntegrityError:
            raise LimsError(f"no data collection {dc_id}") from None
        return int(job_id)

    @_db_call
    def swap_parameter(self, job_id: int, key: str, old: Any, new: Any) -> bool:
        """Compare-and-set one job parameter: ``key`` becomes ``new`` only if it is ``old``
        now (one UPDATE, so of two processes racing only one wins); False if it was not."""
        PJP = isp.ProcessingJobParameter
        with self._write() as conn:
            result = conn.execute(
                update(PJP.__table__)
                .where(
                    PJP.processingJobId == job_id,
                    PJP.parameterKey == key,
                    PJP.parameterValue == encode_parameter(old),
                )
                .values(parameterValue=encode_parameter(new))
            )
            return result.rowcount == 1

    @_db_call
    def add_parameter_once(self, job_id: int, key: str, value: Any) -> bool:
        """Add the job parameter ``key`` unless the job has it already; False if it had. Of
        writers racing (other threads or processes), exactly one adds it."""
        PJ, PJP = isp.ProcessingJob, isp.ProcessingJobParameter
        text = _cut(encode_parameter(value), _size(PJP.parameterValue))
        taken = exists().where(PJP.processingJobId == job_id, PJP.parameterKey == key)
        row = {"processingJobId": job_id, "parameterKey": key, "parameterValue": text}
        with self._write() as conn:
            if conn.dialect.name == "sqlite":  # one writer at a time: one statement is atomic
                added = conn.execute(
                    insert(PJP.__table__).from_select(
                        list(row), select(*(literal(v) for v in row.values())).where(~taken)
                    )
                )
                return added.rowcount == 1
            # InnoDB: lock the job's row so that racing writers take turns (concurrent
            # INSERT ... SELECTs deadlock on the auto-increment lock there).
            job = conn.execute(
                select(PJ.processingJobId).where(PJ.processingJobId == job_id).with_for_update()
            ).first()
            if job is None:
                raise LimsError(f"no processing job {job_id}")
            if conn.execute(select(taken)).scalar():
                return False
            conn.execute(insert(PJP.__table__).values(**row))
            return True

    @_db_call
    def job_parameter(self, job_id: int, key: str) -> Any:
        """One parameter of a job (decoded), or None if it has none of that name: a light read
        for a running job to look at often."""
        PJP = isp.ProcessingJobParameter
        with self._read() as conn:
            text = conn.execute(
                select(PJP.parameterValue)
                .where(PJP.processingJobId == job_id, PJP.parameterKey == key)
                .order_by(PJP.processingJobParameterId)
                .limit(1)
            ).scalar()
        return None if text is None else decode_parameter(text)

    @_db_call
    def create_program(self, job_id: int, step_id: str, uses: str) -> int:
        """An AutoProcProgram (status queued) for one step of a job."""
        size = _size(_P.processingCommandLine)
        if len(step_id) > size or len(uses) > _size(_P.processingPrograms):
            raise LimsError(f"step id or type too long for ISPyB (255 characters): {step_id!r}")
        try:
            with self._write() as conn:
                program_id = conn.execute(
                    insert(_APP).values(
                        processingJobId=job_id,
                        processingCommandLine=step_id,
                        processingPrograms=uses,
                        recordTimeStamp=_now(),
                    )
                ).inserted_primary_key[0]
        except IntegrityError:
            raise LimsError(f"no processing job {job_id}") from None
        return int(program_id)

    @_db_call
    def set_status(
        self,
        program_id: int,
        status: Status | str,
        message: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Move a step to ``status`` if that is a forward move; False (nothing changed) if not.

        Running sets the start time; success and failed set the end time (and the start time
        if it was never set); skipped sets the end time only. ``message`` becomes the step's
        processingMessage (cut to 255 characters) and an AutoProcProgramMessage (ERROR when
        failed, else INFO) that keeps the full text.
        """
        new = Status(status)
        when = _naive(at) or _now()
        values: dict[str, Any] = {}
        if message is not None:
            values["processingMessage"] = _cut(message, _size(_P.processingMessage))
        with self._write() as conn:
            if new is Status.SKIPPED:
                moved, note = _skip(conn, program_id, when, values)
            elif new is Status.QUEUED:  # never a forward move
                moved, note = False, None
            else:
                # One compare-and-set UPDATE: the WHERE clause is can_move() in SQL, so a replayed
                # or late update, or one racing another process, changes nothing.
                where = _P.processingStatus.is_(None)  # queued or running
                if new is Status.RUNNING:
                    where = where & _P.processingStartTime.is_(None)  # queued
                    values["processingStartTime"] = when
                else:
                    values.update(
                        processingStatus=1 if new is Status.SUCCESS else 0,
                        processingEndTime=when,
                        processingStartTime=func.coalesce(_P.processingStartTime, when),
                    )
                result = conn.execute(
                    update(_APP).where(_APP.c.autoProcProgramId == program_id, where).values(values)
                )
                moved, note = result.rowcount == 1, None
            if not moved:
                exists = select(_P.autoProcProgramId).where(_P.autoProcProgramId == program_id)
                if conn.execute(exists).first() is None:
                    raise LimsError(f"no processing program {program_id}")
                return False
            if note is not None:
                _insert_message(conn, program_id, "INFO", note, None, when)
            if message is not None:
                severity = "ERROR" if new is Status.FAILED else "INFO"
                _insert_message(conn, program_id, severity, message, None, when)
            return True

    @_db_call
    def set_progress(self, program_id: int, text: str) -> bool:
        """Live status of a running step (e.g. ``progress_text(...)``) as its processingMessage;
        only while the step is running, so a late update never hides a final message."""
        with self._write() as conn:
            result = conn.execute(
                update(_APP)
                .where(
                    _APP.c.autoProcProgramId == program_id,
                    _APP.c.processingStatus.is_(None),
                    _APP.c.processingStartTime.is_not(None),
                )
                .values(processingMessage=_cut(text, _size(_P.processingMessage)))
            )
            return result.rowcount == 1

    @_db_call
    def set_environment(self, program_id: int, env: Mapping[str, Any]) -> None:
        """Record where a step runs: JSON in processingEnvironment (keys that do not fit its 255
        characters are dropped) and the full JSON in an INFO message."""
        text, _kept = fit_json(env, _size(_P.processingEnvironment))
        full = json.dumps(dict(env), default=_json_default, indent=1)
        with self._write() as conn:
            result = conn.execute(
                update(_APP)
                .where(_APP.c.autoProcProgramId == program_id)
                .values(processingEnvironment=text)
            )
            if result.rowcount != 1:
                raise LimsError(f"no processing program {program_id}")
            _insert_message(conn, program_id, "INFO", "environment", full, _now())

    @_db_call
    def add_message(
        self, program_id: int, severity: str, message: str, description: str | None = None
    ) -> None:
        """An AutoProcProgramMessage; a message longer than 200 characters is cut, and kept
        whole at the start of the description."""
        try:
            with self._write() as conn:
                _insert_message(conn, program_id, severity, message, description, _now())
        except IntegrityError:
            raise LimsError(f"no processing program {program_id}") from None

    @_db_call
    def add_attachment(
        self, program_id: int, path: Path | str, file_type: str = "Result", importance_rank: int = 1
    ) -> None:
        """An AutoProcProgramAttachment: a file a step wrote (Log|Result|Graph|Debug|Input)."""
        kind = {t.lower(): t for t in ATTACHMENT_TYPES}.get(str(file_type).lower())
        if kind is None:
            raise LimsError(
                f"attachment type {file_type!r} is not one of {', '.join(ATTACHMENT_TYPES)}"
            )
        path = Path(path).absolute()
        A = isp.AutoProcProgramAttachment
        if len(path.name) > _size(A.fileName) or len(str(path.parent)) > _size(A.filePath):
            raise LimsError(f"attachment path too long for ISPyB (255 characters at most): {path}")
        try:
            with self._write() as conn:
                conn.execute(
                    insert(A.__table__).values(
                        autoProcProgramId=program_id,
                        fileType=kind,
                        fileName=path.name,
                        filePath=str(path.parent),
                        importanceRank=int(importance_rank),
                        recordTimeStamp=_now(),
                    )
                )
        except IntegrityError:
            raise LimsError(f"no processing program {program_id}") from None

    # ------------------------------------------------------------ reading

    @_db_call
    def job(self, job_id: int) -> JobRecord:
        PJ, PJP, DC = isp.ProcessingJob, isp.ProcessingJobParameter, isp.DataCollection
        with self._read() as conn:
            job = conn.execute(
                select(
                    PJ.processingJobId,
                    PJ.dataCollectionId,
                    PJ.recipe,
                    PJ.displayName,
                    PJ.comments,
                    PJ.automatic,
                    PJ.recordTimestamp,
                    DC.imageDirectory,
                    DC.fileTemplate,
                )
                .select_from(PJ)
                .outerjoin(DC, DC.dataCollectionId == PJ.dataCollectionId)
                .where(PJ.processingJobId == job_id)
            ).first()
            if job is None:
                raise LimsError(f"no processing job {job_id}")
            params = conn.execute(
                select(PJP.parameterKey, PJP.parameterValue)
                .where(PJP.processingJobId == job_id)
                .order_by(PJP.processingJobParameterId)
            ).all()
            steps = _program_records(conn, _P.processingJobId == job_id)
        return JobRecord(
            id=int(job.processingJobId),
            dc_id=job.dataCollectionId,
            recipe=job.recipe or "",
            display_name=job.displayName or "",
            comments=job.comments or "",
            automatic=bool(job.automatic),
            created=job.recordTimestamp,
            parameters={k: decode_parameter(v) for k, v in params},
            scan_file=_scan_file(job.imageDirectory, job.fileTemplate),
            steps=steps,
            status=overall_status(p.status for p in steps),
        )

    @_db_call
    def jobs(self, limit: int = 50) -> list[JobSummary]:
        """The latest jobs, newest first."""
        PJ, DC = isp.ProcessingJob, isp.DataCollection
        with self._read() as conn:
            rows = conn.execute(
                select(
                    PJ.processingJobId,
                    PJ.recipe,
                    PJ.recordTimestamp,
                    DC.imageDirectory,
                    DC.fileTemplate,
                )
                .select_from(PJ)
                .outerjoin(DC, DC.dataCollectionId == PJ.dataCollectionId)
                .order_by(PJ.processingJobId.desc())
                .limit(max(0, int(limit)))
            ).all()
            ids = [r[0] for r in rows]
            statuses: dict[int, list[Status]] = {i: [] for i in ids}
            if ids:
                for job_id, code, start in conn.execute(
                    select(_P.processingJobId, _P.processingStatus, _P.processingStartTime).where(
                        _P.processingJobId.in_(ids)
                    )
                ):
                    statuses[job_id].append(_status_of(code, start))
        return [
            JobSummary(
                id=int(job_id),
                recipe=recipe or "",
                scan_file=_scan_file(directory, template),
                created=created,
                status=overall_status(statuses[job_id]),
                n_steps=len(statuses[job_id]),
            )
            for job_id, recipe, created, directory, template in rows
        ]

    @_db_call
    def program(self, program_id: int) -> ProgramRecord:
        with self._read() as conn:
            records = _program_records(conn, _P.autoProcProgramId == program_id)
        if not records:
            raise LimsError(f"no processing program {program_id}")
        return records[0]


# ---------------------------------------------------------------- statements


def _skip(
    conn: Connection, program_id: int, when: datetime, values: dict[str, Any]
) -> tuple[bool, str | None]:
    """Skip a queued or running step: (moved, an INFO note keeping a dropped start time).

    The encoding needs a skipped step's start NULL, so the start is read (locked on MariaDB) to
    keep it in a note, then cleared by a compare-and-set on what was read."""
    row = conn.execute(
        select(_P.processingStatus, _P.processingStartTime)
        .where(_P.autoProcProgramId == program_id)
        .with_for_update()
    ).first()
    if row is None or row[0] is not None:  # missing, or already final
        return False, None
    start = row[1]
    values = {**values, "processingStatus": 0, "processingEndTime": when}
    note = None
    if start is not None:
        values["processingStartTime"] = None
        note = f"skipped after running since {start.isoformat(sep=' ')}"
    started = _P.processingStartTime.is_(None) if start is None else _P.processingStartTime == start
    result = conn.execute(
        update(_APP)
        .where(_APP.c.autoProcProgramId == program_id, _P.processingStatus.is_(None), started)
        .values(values)
    )
    return result.rowcount == 1, note


def _insert_message(
    conn: Connection,
    program_id: int,
    severity: str,
    message: str,
    description: str | None,
    when: datetime,
) -> None:
    level = str(severity).upper()
    if level not in SEVERITIES:
        raise LimsError(f"message severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    M = isp.AutoProcProgramMessage
    size = _size(M.message)
    if len(message) > size:
        description = message if not description else f"{message}\n\n{description}"
    conn.execute(
        insert(M.__table__).values(
            autoProcProgramId=program_id,
            severity=level,
            message=_cut(message, size),
            description=description,
            recordTimeStamp=when,
        )
    )


def _program_records(conn: Connection, where: Any) -> list[ProgramRecord]:
    """The programs matching ``where``, in creation order, with messages and attachments."""
    programs = conn.execute(select(_APP).where(where).order_by(_P.autoProcProgramId)).all()
    ids = [p.autoProcProgramId for p in programs]
    messages: dict[int, list[MessageRecord]] = {i: [] for i in ids}
    attachments: dict[int, list[AttachmentRecord]] = {i: [] for i in ids}
    if ids:
        M, A = isp.AutoProcProgramMessage, isp.AutoProcProgramAttachment
        for m in conn.execute(
            select(M.__table__)
            .where(M.autoProcProgramId.in_(ids))
            .order_by(M.autoProcProgramMessageId)
        ):
            messages[m.autoProcProgramId].append(
                MessageRecord(
                    id=int(m.autoProcProgramMessageId),
                    severity=m.severity,
                    message=m.message or "",
                    description=m.description,
                    time=m.recordTimeStamp,
                )
            )
        for a in conn.execute(
            select(A.__table__)
            .where(A.autoProcProgramId.in_(ids), (A.deleted == 0) | A.deleted.is_(None))
            .order_by(A.autoProcProgramAttachmentId)
        ):
            attachments[a.autoProcProgramId].append(
                AttachmentRecord(
                    id=int(a.autoProcProgramAttachmentId),
                    file_type=a.fileType or "",
                    path=Path(a.filePath or "") / (a.fileName or ""),
                    importance_rank=a.importanceRank,
                    time=a.recordTimeStamp,
                )
            )
    return [
        ProgramRecord(
            id=int(p.autoProcProgramId),
            job_id=p.processingJobId,
            step_id=p.processingCommandLine or "",
            uses=p.processingPrograms or "",
            status=_status_of(p.processingStatus, p.processingStartTime),
            start=p.processingStartTime,
            end=p.processingEndTime,
            message=p.processingMessage,
            environment=_load_json_dict(p.processingEnvironment),
            messages=messages[p.autoProcProgramId],
            attachments=attachments[p.autoProcProgramId],
            created=p.recordTimeStamp,
        )
        for p in programs
    ]
