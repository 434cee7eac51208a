"""LIMS status updates per second, sustained, on SQLite and MariaDB; none may be lost.

Each step's life is four committed writes: create the program, set it running, add a message,
set it to success (each ``set_status`` one compare-and-set UPDATE). Two ways in:

- ``direct``: :class:`hpcproc.lims.Lims` calls, one transaction each (1 thread, and 4 threads
  with a job each on MariaDB);
- ``outbox``: :class:`hpcproc.lims.outbox.DurableLims`, the way hpcproc jobs record: each call
  is made durable in the local outbox, and the applier group-commits what is queued. The clock
  runs until the last write is committed in the LIMS.

The loop runs for ``duration`` seconds on one thread, then the rows are counted: a missing
program, message or final status raises.

Baseline: the same number of bare SQLAlchemy Core inserts, one committed transaction each, into a
one-table scratch database on the same backend with the same settings (SQLite: WAL,
``synchronous=NORMAL``; MariaDB: the server's defaults): the rate that database commits single
writes at. ratio = ours / bare. Goal: >= 500 writes/s.

MariaDB at 127.0.0.1:3306 (root, no password; ``HPCPROC_BENCH_MARIADB`` overrides the server
URL) gets fresh databases, dropped afterwards; if it does not answer, its rows say so.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import ispyb.sqlalchemy as isp
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)

from benchmarks.common import Result
from hpcproc.lims import Lims
from hpcproc.lims.outbox import DurableLims
from hpcproc.scaninfo import ScanInfo
from hpcproc.status import Status

GOAL = 500.0  # committed status writes per second (issue 5)
WRITES_PER_STEP = 4  # create program, running, message, success
MARIADB_SERVER = os.environ.get(
    "HPCPROC_BENCH_MARIADB", "mysql+mysqlconnector://root@127.0.0.1:3306"
)


def _scan(path: str) -> ScanInfo:
    return ScanInfo(
        path=Path(path),
        scan_id="bench-000001",
        beamline="i18",
        visit="cm99999-1",
        title="LIMS benchmark",
        scan_command="mapscan",
        start_time=datetime.now().replace(microsecond=0),
        end_time=None,
        shape=(10, 10),
        axes=("y", "x"),
        axis_values={"y": tuple(range(10)), "x": tuple(range(10))},
        axis_units={"y": "mm", "x": "mm"},
        finished=False,
    )


def _durable(url: str, duration: float, outbox: Path) -> tuple[int, float]:
    """(committed writes, seconds) through the durable outbox, as a job records: step lifecycles
    are queued for ``duration`` seconds, the clock stops when the last one is in the LIMS."""
    with Lims(url) as lims:  # the schema, and a job to write to
        dc = lims.record_scan(_scan("/bench/cm99999-1/bench-000001.nxs"))
        job = lims.create_job(dc, "bench", {"outbox": True})
    steps = 0
    with DurableLims(url, outbox, id_wait=0) as durable:
        t0 = time.perf_counter()
        while time.perf_counter() < t0 + duration:
            program = durable.create_program(job, f"step{steps}", "bench")
            durable.set_status(program, Status.RUNNING)
            durable.add_message(program, "INFO", f"step {steps} half-way")
            durable.set_status(program, Status.SUCCESS)
            steps += 1
        if not durable.flush(600):
            raise RuntimeError(f"LIMS outbox benchmark: {durable.pending()} writes never applied")
        elapsed = time.perf_counter() - t0
        if durable.failed():
            raise RuntimeError(f"LIMS outbox benchmark: refused {durable.failed()[0]}")
    with Lims(url) as lims:
        _verify(lims, job, steps)
    return steps * WRITES_PER_STEP, elapsed


def _ours(url: str, duration: float, threads: int = 1) -> tuple[int, float]:
    """(committed writes, seconds): step lifecycles for ``duration`` seconds, then verified.

    With several threads, each has a job of its own (as concurrent jobs of one hpcproc do)."""
    with Lims(url) as lims:
        dc = lims.record_scan(_scan("/bench/cm99999-1/bench-000001.nxs"))
        jobs = [lims.create_job(dc, "bench", {"thread": t}) for t in range(threads)]
        steps = [0] * threads
        errors: list[BaseException] = []

        def loop(t: int, deadline: float) -> None:
            try:
                while time.perf_counter() < deadline:
                    program = lims.create_program(jobs[t], f"step{steps[t]}", "bench")
                    lims.set_status(program, Status.RUNNING)
                    lims.add_message(program, "INFO", f"step {steps[t]} half-way")
                    lims.set_status(program, Status.SUCCESS)
                    steps[t] += 1
            except BaseException as exc:  # reported below
                errors.append(exc)

        t0 = time.perf_counter()
        workers = [threading.Thread(target=loop, args=(t, t0 + duration)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        for job, n in zip(jobs, steps, strict=True):
            _verify(lims, job, n)
    return sum(steps) * WRITES_PER_STEP, elapsed


def _verify(lims: Lims, job: int, steps: int) -> None:
    P, M = isp.AutoProcProgram, isp.AutoProcProgramMessage
    with lims._engine.connect() as conn:
        programs = conn.execute(
            select(func.count()).select_from(P).where(P.processingJobId == job)
        ).scalar()
        done = conn.execute(
            select(func.count())
            .select_from(P)
            .where(
                P.processingJobId == job,
                P.processingStatus == 1,
                P.processingStartTime.is_not(None),
                P.processingEndTime.is_not(None),
            )
        ).scalar()
        messages = conn.execute(
            select(func.count())
            .select_from(M)
            .join(P, P.autoProcProgramId == M.autoProcProgramId)
            .where(P.processingJobId == job)
        ).scalar()
    if (programs, done, messages) != (steps, steps, steps):
        raise RuntimeError(
            f"LIMS benchmark lost writes on {lims.url}: {steps} steps written, found "
            f"{programs} programs, {done} successful, {messages} messages"
        )


def _bare(url: str, n: int, threads: int = 1) -> float:
    """Committed inserts per second: ``n`` single-row transactions into a one-table database
    (spread over ``threads`` threads)."""
    engine = create_engine(url, pool_size=max(5, threads))
    if engine.url.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    table = Table(
        "scratch",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("job", Integer),
        Column("message", String(255)),
        Column("time", DateTime),
    )

    def loop(t: int) -> None:
        for i in range(t, n, threads):
            with engine.begin() as conn:
                conn.execute(insert(table).values(job=t, message=f"write {i}", time=datetime.now()))

    try:
        table.metadata.create_all(engine)
        t0 = time.perf_counter()
        workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        with engine.connect() as conn:
            found = conn.execute(select(func.count()).select_from(table)).scalar()
        if found != n:
            raise RuntimeError(f"bare baseline: {n} inserts, {found} rows")
    finally:
        engine.dispose()
    return n / elapsed


@contextmanager
def _mariadb_databases(count: int) -> Iterator[list[str]]:
    """``count`` fresh MariaDB database URLs, dropped afterwards (ConnectionError: no server)."""
    server = create_engine(MARIADB_SERVER)
    try:
        with server.connect():
            pass
    except Exception as exc:
        server.dispose()
        where = f"{server.url.host}:{server.url.port or 3306}"
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:160]
        raise ConnectionError(f"MariaDB not reachable at {where}: {reason}") from None
    names = [f"hpcproc_bench_{uuid.uuid4().hex[:12]}" for _ in range(count)]
    try:
        with server.begin() as conn:
            for name in names:
                conn.execute(text(f"CREATE DATABASE `{name}`"))
        yield [f"{MARIADB_SERVER}/{name}" for name in names]
    finally:
        server.dispose()  # a fresh connection: the server may have restarted meanwhile
        with server.begin() as conn:
            for name in names:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        server.dispose()


def _rows(
    name: str, writes: int, elapsed: float, bare: float, threads: int, setting: str
) -> list[Result]:
    ours = writes / elapsed
    note = (
        f"{writes} committed writes in {elapsed:.1f} s, {threads} thread(s) (one job each), "
        f"{writes // WRITES_PER_STEP} step lifecycles (create, running, message, success), "
        f"all found afterwards; baseline on {threads} thread(s); {setting}"
    )
    return [
        Result(f"lims.{name}", ours, "writes/s", "bare Core inserts", bare, note=note),
        Result(
            f"lims.{name}_vs_goal",
            ours,
            "writes/s",
            "goal",
            GOAL,
            note="ratio >= 1 meets the goal of 500 committed status writes/s",
        ),
    ]


def run(duration: float = 3.0, threads: int = 4) -> list[Result]:
    """SQLite (1 thread: its writers are serialised anyway), MariaDB (1 and ``threads``), each
    direct and through the outbox."""
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        writes, elapsed = _ours(f"sqlite:///{tmp}/lims.sqlite", duration)
        bare = _bare(f"sqlite:///{tmp}/scratch.sqlite", writes)
        setting = "SQLite WAL, synchronous=NORMAL, a file in a tempdir"
        results += _rows("status_updates_sqlite", writes, elapsed, bare, 1, setting)
        outbox = Path(tmp) / "outbox.sqlite"
        writes, elapsed = _durable(f"sqlite:///{tmp}/durable.sqlite", duration, outbox)
        results += _rows("status_updates_sqlite_outbox", writes, elapsed, bare, 1, setting)
        try:
            with _mariadb_databases(4) as (lims_url, scratch1, scratch2, durable_url):
                setting = "MariaDB at 127.0.0.1:3306, server defaults"
                writes, elapsed = _ours(lims_url, duration)
                bare = _bare(scratch1, writes)
                results += _rows("status_updates_mariadb", writes, elapsed, bare, 1, setting)
                outbox = Path(tmp) / "outbox-mariadb.sqlite"
                writes, elapsed = _durable(durable_url, duration, outbox)
                name = "status_updates_mariadb_outbox"
                results += _rows(name, writes, elapsed, bare, 1, setting + "; group commit")
                writes, elapsed = _ours(lims_url, duration, threads)
                bare = _bare(scratch2, writes, threads)
                name = f"status_updates_mariadb_{threads}threads"
                results += _rows(name, writes, elapsed, bare, threads, setting)
        except ConnectionError as exc:
            results.append(
                Result(
                    "lims.status_updates_mariadb",
                    0.0,
                    "writes/s",
                    "bare Core inserts",
                    0.0,
                    note=f"skipped: {exc}",
                )
            )
    return results
