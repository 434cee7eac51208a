"""No LIMS record lost when the database is down: writes go through a durable local outbox.

``DurableLims(url, outbox_path)`` has the write and read calls of :class:`~hpcproc.lims.Lims`.
Every write is first appended to the *outbox*, a local SQLite file (WAL, ``synchronous=FULL``:
once a call has returned, its row survives a crash of the process and a power cut), one row per
call (``seq``, method, tagged-JSON arguments). One background thread, the *applier*, applies the
rows to the LIMS strictly in ``seq`` order and deletes them once applied. It applies what is
queued in batches (up to ``batch_size`` rows, one LIMS transaction each, :meth:`Lims.batch`):
a commit costs the database an fsync, so group commit is what lets a busy beamline's updates
outrun the server's commit rate; with one row queued, a batch is that row. A write therefore never
waits for the database and never raises because it is unreachable; it raises
:class:`~hpcproc.errors.LimsError` at once only for input that could never be recorded (an
unknown status, severity or attachment type, a bad visit, a local id this outbox never gave out,
an argument that cannot be stored).

Ids. ``record_scan``, ``create_job`` and ``create_program`` return the *database id* when the
database answers within ``id_wait`` seconds (default 0.5; only waited for while the database is
reachable, so during an outage the call returns at once), otherwise a *local id*: a negative
integer, ``-seq`` of the outbox row that creates the record, unique for the outbox file forever.
Every write and read accepts either kind; the applier translates local ids when it applies a row
(the local -> database map is kept in the outbox file). :meth:`DurableLims.resolve` gives the
database id of a local id once known. Records read back (:meth:`job`, :meth:`program`) carry
database ids. A create that the LIMS *refuses* (not a connection problem) while the call is
still waiting raises LimsError, as ``Lims`` would.

Outage. When a row fails for a connection problem (SQLAlchemy OperationalError/InterfaceError/
disconnect, also when opening the LIMS at start-up), the applier retries the *same* row after a
back-off (0.2 s doubling to 5 s): rows are never reordered or dropped. A row the LIMS refuses for
a logical reason (e.g. unknown program) is kept in the outbox as *failed* with the reason
(:meth:`DurableLims.failed`) and the next row is applied (a batch holding it is rolled back and
applied again row by row, so only that row fails); rows that use an id created by a failed
row fail too, naming it.

Crash safety. A row applied in the LIMS whose deletion from the outbox was lost (crash in
between, or a connection lost while the LIMS committed) is applied again on restart, so every
write must be harmless to replay:

- ``record_scan`` is a look-up by file path; ``set_status`` is monotonic (a replay changes
  nothing); ``set_progress`` writes the same text again.
- Rows that insert (``create_job``, ``create_program``, ``add_message``, ``add_attachment``,
  ``set_environment``'s INFO message) first store a *watermark* in the outbox: the largest
  committed id of the table they insert into, among the rows of the same parent (data
  collection, job, program; 0 when the parent is created in the same batch). When a row with a
  watermark is applied again, the applier looks for a row above the watermark with the same
  content, not already claimed by an earlier row of the batch, and reuses it instead of
  inserting a second one. This needs no extra
  column or parameter in ISPyB and is exact for one writer per parent, which is how hpcproc
  works (a job's steps are written by the process that runs the job).

Times. ``set_status`` records the time of the *call* (not of the apply) when ``at`` is not given;
other calls pass ``at`` when the adapter's method accepts it (messages and attachments are
otherwise stamped when applied).

Restart. A new ``DurableLims`` on the same outbox file applies what is pending, in order. One
process at a time may use an outbox file (an exclusive lock, ``<outbox>.lock``); a second gets a
LimsError. :meth:`flush` waits until nothing is pending, :meth:`close` stops the applier (rows not
applied stay in the file for the next start).
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import importlib
import inspect
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any

import ispyb.sqlalchemy as isp
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from hpcproc.errors import LimsError
from hpcproc.lims.adapter import ATTACHMENT_TYPES, SEVERITIES, Lims, parse_visit
from hpcproc.lims.records import JobRecord, JobSummary, ProgramRecord
from hpcproc.scaninfo import ScanInfo
from hpcproc.status import Status

__all__ = ["DurableLims", "FailedWrite"]

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.2  # s before the first retry after a connection problem
BACKOFF_MAX = 5.0  # s between retries at most
BATCH_MAX = 200  # queued writes applied in one LIMS transaction at most (group commit)
LINGER = 0.05  # s the applier waits for more writes when a batch is not full
# MySQL/MariaDB error numbers that mean "try again later" even when not an OperationalError.
_TRANSIENT_ERRNOS = {1040, 1053, 1205, 1213, 1927, 2002, 2003, 2005, 2006, 2013, 2055, 4031}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT NOT NULL,
    args TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    watermark INTEGER,
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, seq);
CREATE TABLE IF NOT EXISTS ids (
    local INTEGER PRIMARY KEY,
    method TEXT NOT NULL,
    db INTEGER,
    error TEXT
);
"""


@dataclass(frozen=True)
class FailedWrite:
    """A write the LIMS refused (kept in the outbox, never retried)."""

    seq: int
    method: str
    args: dict[str, Any]
    created: datetime
    error: str


class _Failed(Exception):
    """A row that can never be applied (the reason is the message)."""


class _Unreachable(Exception):
    """The LIMS cannot be opened now: retry later (whatever the reason, it is not the row's)."""


# ---------------------------------------------------------------- argument encoding
# Tagged JSON: readable in the outbox file, and values come back with their types.


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return _encode(value.value)
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, PurePath):
        return {"$path": str(value)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v) for v in value]}
    if isinstance(value, set | frozenset):
        return {"$frozenset": [_encode(v) for v in sorted(value, key=repr)]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v) for k, v in value.items()}
        return {"$items": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith("hpcproc."):
            raise LimsError(f"cannot keep a {cls.__name__} in the LIMS outbox")
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$dataclass": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    for attr in ("tolist", "item"):  # numpy arrays and scalars
        if hasattr(value, attr):
            return _encode(getattr(value, attr)())
    raise LimsError(f"cannot keep a {type(value).__name__} in the LIMS outbox")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "$datetime" in value:
        return datetime.fromisoformat(value["$datetime"])
    if "$path" in value:
        return Path(value["$path"])
    if "$tuple" in value:
        return tuple(_decode(v) for v in value["$tuple"])
    if "$frozenset" in value:
        return frozenset(_decode(v) for v in value["$frozenset"])
    if "$items" in value:
        return {_decode(k): _decode(v) for k, v in value["$items"]}
    if "$dataclass" in value:
        module, _, qualname = value["$dataclass"].partition(":")
        if not module.startswith("hpcproc."):
            raise _Failed(f"outbox row names a class outside hpcproc: {value['$dataclass']}")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        return cls(**{k: _decode(v) for k, v in value["fields"].items()})
    return {k: _decode(v) for k, v in value.items()}


def _dumps(args: Mapping[str, Any]) -> str:
    return json.dumps(_encode(dict(args)), separators=(",", ":"))


# ---------------------------------------------------------------- error classes


def _transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from or while handling) is a connection problem."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OperationalError | InterfaceError | DisconnectionError):
            return True
        if isinstance(e, PoolTimeoutError | ConnectionError | TimeoutError):
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        if getattr(e, "errno", None) in _TRANSIENT_ERRNOS:
            return True
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            return True  # e.g. the LIMS file system is not there (yet)
        todo.extend((e.__cause__, e.__context__, getattr(e, "orig", None)))
    return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------- what each write needs


def _max_id(lims: Lims, column: Any, parent: Any, parent_id: int) -> int:
    with lims._engine.connect() as conn:  # the adapter's engine: one connection pool
        return int(conn.execute(select(func.max(column)).where(parent == parent_id)).scalar() or 0)


def _rows_above(lims: Lims, table: Any, key: Any, parent: Any, parent_id: int, mark: int) -> list:
    with lims._engine.connect() as conn:
        return list(
            conn.execute(
                select(table).where(parent == parent_id, key > mark).order_by(key)
            ).mappings()
        )


def _job_watermark(lims: Lims, a: dict[str, Any]) -> int:
    PJ = isp.ProcessingJob
    return _max_id(lims, PJ.processingJobId, PJ.dataCollectionId, a["dc_id"])


def _same(stored: str | None, given: Any) -> bool:
    """``stored`` is ``given`` as the adapter stores it (cut to the column with "...")."""
    stored, text = stored or "", str(given or "")
    return stored == text or (stored.endswith("...") and text.startswith(stored[:-3]))


def _job_lookup(lims: Lims, a: dict[str, Any], mark: int) -> list[int]:
    from hpcproc.lims.adapter import encode_parameter

    PJ, PJP = isp.ProcessingJob, isp.ProcessingJobParameter
    rows = _rows_above(
        lims, PJ.__table__, PJ.processingJobId, PJ.dataCollectionId, a["dc_id"], mark
    )
    wanted = {str(k): encode_parameter(v) for k, v in a["parameters"].items()}
    found = []
    for row in rows:
        if not (
            _same(row["recipe"], a["recipe"])
            and _same(row["displayName"], a.get("display_name"))
            and _same(row["comments"], a.get("comments"))
        ):
            continue
        with lims._engine.connect() as conn:
            params = dict(
                conn.execute(
                    select(PJP.parameterKey, PJP.parameterValue).where(
                        PJP.processingJobId == row["processingJobId"]
                    )
                ).all()
            )
        if params == wanted:
            found.append(int(row["processingJobId"]))
    return found


def _program_watermark(lims: Lims, a: dict[str, Any]) -> int:
    P = isp.AutoProcProgram
    return _max_id(lims, P.autoProcProgramId, P.processingJobId, a["job_id"])


def _program_lookup(lims: Lims, a: dict[str, Any], mark: int) -> list[int]:
    P = isp.AutoProcProgram
    rows = _rows_above(lims, P.__table__, P.autoProcProgramId, P.processingJobId, a["job_id"], mark)
    return [
        int(row["autoProcProgramId"])
        for row in rows
        if row["processingCommandLine"] == a["step_id"] and row["processingPrograms"] == a["uses"]
    ]


def _message_watermark(lims: Lims, a: dict[str, Any]) -> int:
    M = isp.AutoProcProgramMessage
    return _max_id(lims, M.autoProcProgramMessageId, M.autoProcProgramId, a["program_id"])


def _message_rows(lims: Lims, a: dict[str, Any], mark: int) -> list:
    M = isp.AutoProcProgramMessage
    return _rows_above(
        lims, M.__table__, M.autoProcProgramMessageId, M.autoProcProgramId, a["program_id"], mark
    )


def _message_lookup(lims: Lims, a: dict[str, Any], mark: int) -> list[int]:
    head = str(a["message"])[:100]
    return [
        int(row["autoProcProgramMessageId"])
        for row in _message_rows(lims, a, mark)
        if row["severity"] == str(a["severity"]).upper() and (row["message"] or "")[:100] == head
    ]


def _environment_lookup(lims: Lims, a: dict[str, Any], mark: int) -> list[int]:
    return [
        int(row["autoProcProgramMessageId"])
        for row in _message_rows(lims, a, mark)
        if row["severity"] == "INFO" and row["message"] == "environment"
    ]


def _attachment_watermark(lims: Lims, a: dict[str, Any]) -> int:
    A = isp.AutoProcProgramAttachment
    return _max_id(lims, A.autoProcProgramAttachmentId, A.autoProcProgramId, a["program_id"])


def _attachment_lookup(lims: Lims, a: dict[str, Any], mark: int) -> list[int]:
    A = isp.AutoProcProgramAttachment
    path = Path(a["path"])
    rows = _rows_above(
        lims,
        A.__table__,
        A.autoProcProgramAttachmentId,
        A.autoProcProgramId,
        a["program_id"],
        mark,
    )
    return [
        int(row["autoProcProgramAttachmentId"])
        for row in rows
        if row["fileName"] == path.name and row["filePath"] == str(path.parent)
    ]


@dataclass(frozen=True)
class _Kind:
    creates: bool = False  # returns a new id (a local id until applied)
    id_arg: str | None = None  # the argument holding an id that may be local
    table: str | None = None  # the table it inserts into (ids claimed by a replay, per table)
    watermark: Callable[[Lims, dict[str, Any]], int] | None = None
    # The ids above a watermark of rows with the same content, in insertion order.
    lookup: Callable[[Lims, dict[str, Any], int], list[int]] | None = None


_KINDS: dict[str, _Kind] = {
    "record_scan": _Kind(creates=True),  # idempotent by file path
    "create_job": _Kind(True, "dc_id", "job", _job_watermark, _job_lookup),
    "create_program": _Kind(True, "job_id", "program", _program_watermark, _program_lookup),
    "set_status": _Kind(id_arg="program_id"),  # monotonic
    "set_progress": _Kind(id_arg="program_id"),  # same text again
    "set_environment": _Kind(
        False, "program_id", "message", _message_watermark, _environment_lookup
    ),
    "add_message": _Kind(False, "program_id", "message", _message_watermark, _message_lookup),
    "add_attachment": _Kind(
        False, "program_id", "attachment", _attachment_watermark, _attachment_lookup
    ),
}


def _accepts(method: str, name: str) -> bool:
    try:
        return name in inspect.signature(getattr(Lims, method)).parameters
    except (AttributeError, TypeError, ValueError):
        return False


# ---------------------------------------------------------------- the durable adapter


class DurableLims:
    """The LIMS calls of :class:`Lims`, with writes queued in a durable outbox (see module doc)."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        outbox_path: str | os.PathLike[str],
        *,
        id_wait: float = 0.5,
        backoff: tuple[float, float] = (BACKOFF_FIRST, BACKOFF_MAX),
        batch_size: int = BATCH_MAX,
        linger: float = LINGER,
        start: bool = True,
    ) -> None:
        self._target = url
        try:
            self.url = (
                f"sqlite:///{Path(url)}"
                if isinstance(url, os.PathLike)
                else make_url(url).render_as_string(hide_password=True)
            )
        except ArgumentError:
            raise LimsError("LIMS URL is not a URL like sqlite:///path/lims.sqlite") from None
        self.outbox_path = Path(outbox_path)
        self.id_wait = max(0.0, float(id_wait))
        self.batch_size = max(1, int(batch_size))
        self.linger = max(0.0, float(linger))
        self._backoff = backoff
        self.outbox_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(f"{self.outbox_path}.lock", "a+")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise LimsError(
                f"LIMS outbox {self.outbox_path} is in use by another DurableLims "
                "(one process at a time per outbox file)"
            ) from None
        self._db = sqlite3.connect(
            self.outbox_path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db_lock = threading.Lock()  # one statement/transaction on the outbox at a time
        self._changed = threading.Condition()  # a row applied or failed, health changed
        self._wake = threading.Event()  # a row was queued (or close() was called)
        self._stop = threading.Event()
        self._lims: Lims | None = None
        self._lims_lock = threading.Lock()
        self._healthy = True  # the last attempt reached the database (optimistic at start)
        self.last_error: str | None = None  # the last connection problem, for status displays
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lims-outbox", daemon=True)
        if start:
            self.start()

    # ------------------------------------------------------------ outbox plumbing

    def _sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._db_lock:
            return self._db.execute(statement, params).fetchall()

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _enqueue(self, method: str, args: dict[str, Any]) -> int:
        if self._closed:
            raise LimsError("LIMS outbox is closed")
        kind = _KINDS[method]
        payload = _dumps(args)
        ref = args.get(kind.id_arg) if kind.id_arg else None
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int)):
            raise LimsError(f"{method}: {kind.id_arg} must be an integer id, not {ref!r}")

        def work(db: sqlite3.Connection) -> int:
            known = "SELECT 1 FROM ids WHERE local = ?"
            if ref is not None and ref < 0 and db.execute(known, (ref,)).fetchone() is None:
                raise LimsError(f"{method}: {ref} is not a local id of {self.outbox_path}")
            seq = db.execute(
                "INSERT INTO outbox (method, args, created) VALUES (?, ?, ?)",
                (method, payload, time.time()),
            ).lastrowid
            if kind.creates:
                db.execute("INSERT INTO ids (local, method) VALUES (?, ?)", (-seq, method))
            return int(seq)

        seq = self._transaction(work)
        self._wake.set()
        return seq

    def _create(self, method: str, args: dict[str, Any]) -> int:
        local = -self._enqueue(method, args)
        if self.id_wait <= 0 or not self._thread.is_alive():
            return local
        deadline = time.monotonic() + self.id_wait
        with self._changed:
            while self._healthy:
                db_id, error = self._resolved(local)
                if error is not None:
                    raise LimsError(error)
                if db_id is not None:
                    return db_id
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return local

    def _resolved(self, local: int) -> tuple[int | None, str | None]:
        row = self._sql("SELECT db, error FROM ids WHERE local = ?", (local,))
        return (row[0][0], row[0][1]) if row else (None, None)

    def _db_id(self, any_id: int, what: str) -> int:
        """The database id for reads; LimsError if a local id is not applied yet."""
        if any_id >= 0:
            return any_id
        db_id, error = self._resolved(any_id)
        if db_id is not None:
            return int(db_id)
        if error is not None:
            raise LimsError(f"{what} {any_id} was never recorded: {error}")
        raise LimsError(
            f"{what} {any_id} is not in the LIMS yet ({self.pending()} writes wait in the outbox)"
        )

    # ------------------------------------------------------------ public outbox calls

    def start(self) -> None:
        """Start the applier (done by the constructor unless ``start=False``)."""
        if not self._thread.is_alive() and not self._closed:
            self._thread.start()

    def resolve(self, any_id: int) -> int | None:
        """The database id of a local id once its create is applied (a database id: itself)."""
        if any_id >= 0:
            return any_id
        db_id, _error = self._resolved(any_id)
        return None if db_id is None else int(db_id)

    def pending(self) -> int:
        """How many writes wait to be applied."""
        return int(self._sql("SELECT count(*) FROM outbox WHERE state = 'pending'")[0][0])

    def failed(self) -> list[FailedWrite]:
        """Writes the LIMS refused, oldest first (they stay in the outbox file)."""
        rows = self._sql(
            "SELECT seq, method, args, created, error FROM outbox WHERE state = 'failed' "
            "ORDER BY seq"
        )
        return [
            FailedWrite(seq, method, _decode(json.loads(args)), datetime.fromtimestamp(t), error)
            for seq, method, args, t, error in rows
        ]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is applied (or failed); False if ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self.pending():
                if not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(0.5 if left is None else min(left, 0.5))
        return True

    def close(self, flush_timeout: float = 10.0) -> None:
        """Apply what is pending (waiting ``flush_timeout`` s at most), then stop. Writes not
        applied stay in the outbox file: the next ``DurableLims`` on it applies them."""
        if self._closed:
            return
        if flush_timeout > 0 and self._thread.is_alive():
            self.flush(flush_timeout)
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._db_lock:
            self._db.close()
        if self._lims is not None:
            self._lims.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    def __enter__(self) -> DurableLims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DurableLims({self.url!r}, {str(self.outbox_path)!r})"

    # ------------------------------------------------------------ writes (Lims' API)

    def record_scan(self, scan: ScanInfo, experiment_type: str | None = None) -> int:
        parse_visit(scan.visit)  # a bad visit can never be recorded: say so now
        if experiment_type is not None:
            allowed = isp.DataCollectionGroup.__table__.c.experimentType.type.enums
            if experiment_type not in allowed:
                raise LimsError(
                    f"experiment type {experiment_type!r} is not one of ISPyB's: {allowed}"
                )
        return self._create("record_scan", {"scan": scan, "experiment_type": experiment_type})

    def create_job(
        self, dc_id: int, recipe: str, parameters: Mapping[str, Any], **options: Any
    ) -> int:
        """As :meth:`Lims.create_job` (``display_name``, ``comments``, ``automatic``, ...)."""
        args = {"dc_id": dc_id, "recipe": recipe, "parameters": dict(parameters), **options}
        return self._create("create_job", args)

    def create_program(self, job_id: int, step_id: str, uses: str, **options: Any) -> int:
        return self._create(
            "create_program", {"job_id": job_id, "step_id": step_id, "uses": uses, **options}
        )

    def set_status(
        self,
        program_id: int,
        status: Status | str,
        message: str | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Queue a status change (stamped now when ``at`` is None); True once queued (whether it
        moves the step forward is decided when it is applied)."""
        try:
            new = Status(status)
        except ValueError:
            raise LimsError(f"unknown step status {status!r}") from None
        when = at if at is not None else datetime.now().astimezone()
        args = {"program_id": program_id, "status": new, "message": message, "at": when}
        self._enqueue("set_status", args)
        return True

    def set_progress(self, program_id: int, text: str) -> bool:
        self._enqueue("set_progress", {"program_id": program_id, "text": text})
        return True

    def set_environment(self, program_id: int, env: Mapping[str, Any]) -> None:
        self._enqueue("set_environment", self._stamped("set_environment", program_id, env=env))

    def add_message(
        self, program_id: int, severity: str, message: str, description: str | None = None
    ) -> None:
        if str(severity).upper() not in SEVERITIES:
            raise LimsError(f"message severity {severity!r} is not one of {', '.join(SEVERITIES)}")
        args = self._stamped(
            "add_message", program_id, severity=severity, message=message, description=description
        )
        self._enqueue("add_message", args)

    def add_attachment(
        self, program_id: int, path: Path | str, file_type: str = "Result", importance_rank: int = 1
    ) -> None:
        if str(file_type).lower() not in {t.lower() for t in ATTACHMENT_TYPES}:
            raise LimsError(
                f"attachment type {file_type!r} is not one of {', '.join(ATTACHMENT_TYPES)}"
            )
        args = self._stamped(
            "add_attachment",
            program_id,
            path=Path(path).absolute(),  # the working directory may differ when applied
            file_type=file_type,
            importance_rank=int(importance_rank),
        )
        self._enqueue("add_attachment", args)

    def _stamped(self, method: str, program_id: int, **args: Any) -> dict[str, Any]:
        """The arguments, with the call time as ``at`` when the adapter's method takes one."""
        if _accepts(method, "at"):
            args["at"] = datetime.now().astimezone()
        return {"program_id": program_id, **args}

    # ------------------------------------------------------------ reads (from the database)

    def job(self, job_id: int) -> JobRecord:
        return self._connect().job(self._db_id(job_id, "job"))

    def program(self, program_id: int) -> ProgramRecord:
        return self._connect().program(self._db_id(program_id, "program"))

    def jobs(self, limit: int = 50) -> list[JobSummary]:
        return self._connect().jobs(limit)

    def job_parameter(self, job_id: int, key: str) -> Any:
        return self._connect().job_parameter(self._db_id(job_id, "job"), key)

    def __getattr__(self, name: str) -> Any:
        """Other read calls of the adapter go straight to the database."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._connect(), name)

    def _connect(self) -> Lims:
        with self._lims_lock:
            if self._lims is None:
                try:
                    self._lims = Lims(self._target)
                except LimsError:
                    raise
                except Exception as exc:  # e.g. the LIMS file system is not there
                    raise LimsError(f"cannot open the LIMS {self.url}: {_one_line(exc)}") from exc
            return self._lims

    # ------------------------------------------------------------ the applier

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            rows = self._pending_rows()
            if not rows:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if len(rows) < self.batch_size and self._stop.wait(self.linger) is False:
                # Lingered a moment so that a burst of writes shares one batch: a batch costs
                # three commits (watermarks, LIMS, outbox) whatever its size.
                rows = self._pending_rows()
            outcome = self._attempt(rows, set())
            if outcome == "refused":
                # The LIMS refused a row of the batch (and so none of it was committed): apply
                # them one by one, so that only that row fails.
                unapplied = {row[0] for row in rows}
                for row in rows:
                    outcome = self._attempt([row], unapplied)
                    if outcome == "unreachable":
                        break
            if outcome == "unreachable":
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            if not self._healthy:
                log.warning("LIMS reachable again: applying the outbox %s", self.outbox_path)
            self._set_health(True, None)
            delay = self._backoff[0]

    def _pending_rows(self) -> list[tuple[Any, ...]]:
        """The next batch: up to ``batch_size`` pending rows, oldest first."""
        return self._sql(
            "SELECT seq, method, args, watermark FROM outbox WHERE state = 'pending' "
            "ORDER BY seq LIMIT ?",
            (self.batch_size,),
        )

    def _attempt(self, rows: list[tuple[Any, ...]], unapplied: set[int]) -> str:
        """Apply ``rows`` in one transaction: "ok" (applied, or the one row failed for good),
        "refused" (a row of several refused: nothing applied) or "unreachable" (retry later)."""
        try:
            self._apply(rows, unapplied)
            return "ok"
        except Exception as exc:
            if isinstance(exc, _Unreachable) or (not isinstance(exc, _Failed) and _transient(exc)):
                if self._healthy:
                    log.warning("LIMS unreachable, writes kept in %s: %s", self.outbox_path, exc)
                self._set_health(False, _one_line(exc))
                return "unreachable"
            if len(rows) > 1:
                return "refused"
            reason = str(exc) if isinstance(exc, _Failed) else _one_line(exc)
            self._fail(rows[0][0], rows[0][1], reason)
            return "ok"

    def _set_health(self, healthy: bool, error: str | None) -> None:
        with self._changed:
            self._healthy = healthy
            if error is not None:
                self.last_error = error
            self._changed.notify_all()

    def _apply(self, rows: list[tuple[Any, ...]], unapplied: set[int]) -> None:
        """Apply outbox rows (in ``seq`` order) to the LIMS in one transaction, then delete them.

        Watermarks are taken first, from the committed state, and stored in the outbox before
        the LIMS transaction starts. A row that already had one was tried before and may be in
        the LIMS (a commit whose news was lost): its lookup finds what it inserted, skipping ids
        claimed by earlier rows of this batch (two identical messages are two rows). Rows in
        ``unapplied`` are known not to be in the LIMS (their batch was refused)."""
        batch: list[tuple[int, str, _Kind, dict[str, Any], int | None, bool]] = []
        created: dict[int, int | None] = {}  # local id -> database id, for creates in this batch
        marks: list[tuple[int, int]] = []
        known: dict[tuple[str | None, int], int] = {}  # (table, parent) -> watermark
        for seq, method, payload, watermark in rows:
            kind = _KINDS.get(method)
            if kind is None:
                raise _Failed(f"unknown outbox call {method!r}")
            args = _decode(json.loads(payload))
            lookup = watermark is not None and seq not in unapplied
            if kind.watermark is not None and watermark is None:
                parent = args[kind.id_arg] if kind.id_arg else None
                if parent is not None and parent < 0 and parent in created:
                    watermark = 0  # its parent is created in this batch: it has no rows yet
                else:
                    # The same for every row of the batch with this parent: ask once.
                    key = (kind.table, self._ids(args, kind)[kind.id_arg or ""])
                    if key not in known:
                        lims = self._lims_or_unreachable()
                        known[key] = kind.watermark(lims, self._ids(args, kind))
                    watermark = known[key]
                marks.append((watermark, seq))
            if kind.creates:
                created[-seq] = None
            batch.append((seq, method, kind, args, watermark, lookup))
        if marks:
            self._transaction(
                lambda db: db.executemany(
                    "UPDATE outbox SET watermark = ?, attempts = attempts + 1 WHERE seq = ?", marks
                )
            )
        lims = self._lims_or_unreachable()
        claimed: dict[str | None, set[int]] = {}
        results: list[tuple[int, int | None]] = []
        with lims.batch():
            for seq, method, kind, args, watermark, lookup in batch:
                args = self._ids(args, kind, created)
                found = None
                if lookup and kind.lookup is not None and watermark is not None:
                    taken = claimed.setdefault(kind.table, set())
                    found = next(
                        (i for i in kind.lookup(lims, args, watermark) if i not in taken), None
                    )
                    if found is not None:
                        taken.add(found)
                result = found if found is not None else getattr(lims, method)(**args)
                if kind.creates:
                    created[-seq] = int(result)
                results.append((seq, int(result) if kind.creates else None))
        self._done(results)

    def _lims_or_unreachable(self) -> Lims:
        try:
            return self._connect()
        except Exception as exc:
            raise _Unreachable(_one_line(exc)) from exc

    def _ids(
        self, args: dict[str, Any], kind: _Kind, created: Mapping[int, int | None] | None = None
    ) -> dict[str, Any]:
        """``args`` with a local id replaced by its database id (from ``created`` first)."""
        local = args.get(kind.id_arg) if kind.id_arg else None
        if local is None or local >= 0:
            return args
        db_id = (created or {}).get(local)
        return {**args, kind.id_arg: db_id if db_id is not None else self._translate(local)}

    def _translate(self, local: int) -> int:
        db_id, error = self._resolved(local)
        if db_id is not None:
            return int(db_id)
        if error is not None:
            raise _Failed(f"uses {local}, whose create failed: {error}")
        raise _Failed(f"uses {local}, which no earlier write of this outbox created")

    def _done(self, results: list[tuple[int, int | None]]) -> None:
        """Mark applied rows done: record the database ids of creates, delete the rows."""

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE ids SET db = ? WHERE local = ?",
                [(db_id, -seq) for seq, db_id in results if db_id is not None],
            )
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in results])

        self._transaction(work)
        with self._changed:
            self._changed.notify_all()

    def _fail(self, seq: int, method: str, reason: str) -> None:
        log.error("LIMS refused outbox write %d (%s): %s", seq, method, reason)

        def work(db: sqlite3.Connection) -> None:
            db.execute("UPDATE outbox SET state = 'failed', error = ? WHERE seq = ?", (reason, seq))
            db.execute("UPDATE ids SET error = ? WHERE local = ?", (reason, -seq))

        self._transaction(work)
        with self._changed:
            self._changed.notify_all()
