"""The durable LIMS outbox: nothing lost, nothing duplicated, in order, when the database is down.

SQLite tests inject connection failures and crashes; the MariaDB test stops the real server in the
middle of a job with the same command that starts it, and starts it again.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ispyb.sqlalchemy as isp
import pytest
from sqlalchemy import create_engine, event, func, select, text
from test_lims import MARIADB_SERVER, T0, make_scan

from hpcproc.errors import LimsError
from hpcproc.lims.outbox import DurableLims, _decode, _encode
from hpcproc.scaninfo import DatasetInfo, ScanInfo
from hpcproc.status import Status

FAST = (0.02, 0.2)  # back-off for tests: retry quickly

M, A, P = isp.AutoProcProgramMessage, isp.AutoProcProgramAttachment, isp.AutoProcProgram
PJ, DC = isp.ProcessingJob, isp.DataCollection


def counts(engine: Any) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            model.__name__: conn.execute(select(func.count()).select_from(model)).scalar()
            for model in (DC, PJ, isp.ProcessingJobParameter, P, M, A)
        }


@pytest.fixture
def paths(tmp_path: Path) -> tuple[str, Path]:
    return f"sqlite:///{tmp_path / 'lims.sqlite'}", tmp_path / "outbox.sqlite"


class Outage:
    """Makes every statement of a Lims' engine fail like a lost connection while ``down``."""

    def __init__(self, durable: DurableLims) -> None:
        self.down = False
        engine = durable._connect()._engine

        @event.listens_for(engine, "before_cursor_execute")
        def _fail(*_args: Any) -> None:
            if self.down:
                raise sqlite3.OperationalError("disk I/O error (simulated outage)")


def record_job(lims: DurableLims, n_programs: int = 2) -> tuple[int, int, list[int]]:
    dc = lims.record_scan(make_scan())
    job = lims.create_job(dc, "xrd_map", {"npt": 2000, "poni": "/data/cal.poni"}, comments="c")
    programs = [lims.create_program(job, f"step{i}", "xrd_integrate") for i in range(n_programs)]
    return dc, job, programs


# ---------------------------------------------------------------- SQLite


def test_local_ids_map_to_database_ids_in_order(paths: tuple[str, Path]) -> None:
    url, outbox = paths
    with DurableLims(url, outbox, start=False) as lims:  # nothing applied until start()
        dc, job, (p1, p2) = record_job(lims)
        assert (dc, job, p1, p2) == (-1, -2, -3, -4)  # local ids: -seq of the creating row
        assert lims.resolve(job) is None
        lims.set_environment(p1, {"cluster": "local"})
        lims.set_status(p1, Status.RUNNING, at=T0)
        lims.set_progress(p1, "3/10")
        lims.add_message(p1, "warning", "slow frame")
        lims.set_status(p1, "success", "done")
        lims.add_attachment(p1, "/data/out.nxs", "Result", 1)
        lims.set_status(p2, "skipped")
        with pytest.raises(LimsError, match="not in the LIMS yet"):
            lims.job(job)
        assert lims.pending() == 11
        lims.start()
        assert lims.flush(20)
        assert lims.pending() == 0 and lims.failed() == []
        db_job, db_p1 = lims.resolve(job), lims.resolve(p1)
        assert db_job is not None and db_job > 0 and db_p1 is not None and db_p1 > 0
        assert lims.resolve(db_job) == db_job  # a database id is its own
        record = lims.job(job)  # reads take local ids too
        assert record.id == db_job and record.dc_id == lims.resolve(dc)
        assert record.parameters == {"npt": 2000, "poni": "/data/cal.poni"}
        step1, step2 = record.steps
        assert (step1.id, step1.status, step2.status) == (db_p1, Status.SUCCESS, Status.SKIPPED)
        assert step1.start == T0  # the time given, not the time applied
        assert [(m.severity, m.message) for m in step1.messages] == [
            ("INFO", "environment"),
            ("WARNING", "slow frame"),
            ("INFO", "done"),
        ]
        assert [str(a.path) for a in step1.attachments] == ["/data/out.nxs"]
        assert lims.program(p2).status is Status.SKIPPED


def test_creates_return_database_ids_when_the_database_answers(paths: tuple[str, Path]) -> None:
    url, outbox = paths
    with DurableLims(url, outbox, id_wait=10) as lims:
        dc, job, programs = record_job(lims)
        assert min(dc, job, *programs) > 0
        assert lims.program(programs[0]).job_id == job


def test_status_time_is_the_call_time(paths: tuple[str, Path]) -> None:
    url, outbox = paths
    with DurableLims(url, outbox, start=False) as lims:
        _dc, _job, (p1, _p2) = record_job(lims)
        lims.set_status(p1, "running")
        called = time.time()
        time.sleep(1.2)
        lims.start()
        assert lims.flush(20)
        start = lims.program(p1).start
        assert start is not None and abs(start.timestamp() - called) < 1.0


def test_outage_writes_return_at_once_and_apply_in_order(paths: tuple[str, Path]) -> None:
    url, outbox = paths
    with DurableLims(url, outbox, backoff=FAST) as lims:
        _dc, job, (p1, p2) = record_job(lims)
        lims.set_status(p1, "running")
        assert lims.flush(20)
        outage = Outage(lims)
        outage.down = True
        t0 = time.monotonic()
        for i in range(20):
            lims.set_progress(p1, f"{i}/20")
        lims.add_message(p1, "INFO", "first")
        lims.add_message(p1, "INFO", "second")
        p3 = lims.create_program(job, "late", "xrd_integrate")  # created during the outage
        lims.set_status(p3, "running")
        lims.set_status(p1, "success", "all done")
        lims.set_status(p2, "failed", "boom")
        lims.set_status(p1, "failed", "too late: p1 is final")  # ignored when applied
        assert time.monotonic() - t0 < 2.0
        assert p3 < 0 and lims.resolve(p3) is None
        time.sleep(0.3)
        assert lims.pending() == 27
        assert lims.last_error is not None and "simulated outage" in lims.last_error
        outage.down = False
        assert lims.flush(20)
        assert lims.failed() == []
        step1, step2, step3 = lims.job(job).steps
        assert (step1.status, step2.status, step3.status) == (
            Status.SUCCESS,
            Status.FAILED,
            Status.RUNNING,
        )
        assert step3.id == lims.resolve(p3) and step3.step_id == "late"
        assert [m.message for m in step1.messages] == ["first", "second", "all done"]
        assert step1.message == "all done"


def test_database_down_at_start(tmp_path: Path) -> None:
    """The LIMS cannot even be opened (its directory is a file): writes wait in the outbox."""
    blocker = tmp_path / "lims"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker}/lims.sqlite"
    with DurableLims(url, tmp_path / "outbox.sqlite", backoff=FAST) as lims:
        t0 = time.monotonic()
        dc, job, (p1, _p2) = record_job(lims)
        lims.set_status(p1, "success", "done")
        assert time.monotonic() - t0 < 1.5  # waited for an id once at most (id_wait 0.5 s)
        assert min(dc, job, p1) < 0
        assert not lims.flush(0.5)
        assert lims.pending() == 5 and lims.last_error
        with pytest.raises(LimsError):
            lims.job(job)
        blocker.unlink()
        assert lims.flush(20)
        assert lims.program(p1).status is Status.SUCCESS
        assert lims.failed() == []


def test_restart_replays_what_is_pending(paths: tuple[str, Path]) -> None:
    url, outbox = paths
    first = DurableLims(url, outbox, start=False)
    _dc, job, (p1, p2) = record_job(first)
    first.set_status(p1, "running")
    first.set_status(p1, "success", "done")
    first.set_status(p2, "failed", "boom")
    first.close(flush_timeout=0)  # the process stops with everything pending
    with DurableLims(url, outbox) as second:
        assert second.pending() == 7
        assert second.flush(20)
        record = second.job(job)  # the first process's local ids resolve
        assert [s.status for s in record.steps] == [Status.SUCCESS, Status.FAILED]
        assert counts(second._connect()._engine)["AutoProcProgram"] == 2


def test_one_process_per_outbox(paths: tuple[str, Path]) -> None:
    url, outbox = paths
    with DurableLims(url, outbox, start=False), pytest.raises(LimsError, match="in use"):
        DurableLims(url, outbox)


class Crash(BaseException):
    """The process dies (not an Exception: the applier does not catch it)."""


CRASH_SCRIPT = [
    "record_scan",
    "create_job",
    "create_program",
    "set_environment",
    "set_status",
    "add_message",
    "add_message",  # the same message again: a replay must find two, not one
    "add_attachment",
    "set_status",
]
# (batch size, row whose batch crashes): one row at a time, in batches of 4, all in one batch
CRASHES = [(1, i) for i in range(len(CRASH_SCRIPT))] + [(4, 0), (4, 5), (4, 8), (200, 0)]


@pytest.mark.parametrize(
    ("batch_size", "crash_at"),
    CRASHES,
    ids=[f"batch{b}-{CRASH_SCRIPT[i]}{i}" for b, i in CRASHES],
)
def test_crash_between_apply_and_done_duplicates_nothing(
    paths: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, batch_size: int, crash_at: int
) -> None:
    url, outbox = paths
    first = DurableLims(url, outbox, start=False, batch_size=batch_size)
    dc = first.record_scan(make_scan())
    job = first.create_job(dc, "xrd_map", {"npt": 2000}, display_name="xrd_map v1")
    program = first.create_program(job, "integrate", "xrd_integrate")
    first.set_environment(program, {"cluster": "local", "workers": 2})
    first.set_status(program, "running", "started")
    first.add_message(program, "WARNING", "frame 7 saturated")
    first.add_message(program, "WARNING", "frame 7 saturated")
    first.add_attachment(program, "/data/out.nxs", "Result")
    first.set_status(program, "success", "done")

    applied = threading.Event()
    original = DurableLims._done

    def crash(self: DurableLims, results: list[tuple[int, int | None]]) -> None:
        if crash_at + 1 in {seq for seq, _ in results}:  # in the LIMS, not yet marked done
            applied.set()
            raise Crash
        original(self, results)

    monkeypatch.setattr(DurableLims, "_done", crash)
    monkeypatch.setattr(threading, "excepthook", lambda _args: None)  # the dying applier
    first.start()
    assert applied.wait(20)
    first._thread.join(10)
    assert not first._thread.is_alive()
    batch_start = crash_at // batch_size * batch_size
    assert first.pending() == len(CRASH_SCRIPT) - batch_start
    first.close(flush_timeout=0)
    monkeypatch.undo()

    with DurableLims(url, outbox) as second:  # the restarted process
        assert second.flush(20)
        assert second.failed() == []
        assert counts(second._connect()._engine) == {
            "DataCollection": 1,
            "ProcessingJob": 1,
            "ProcessingJobParameter": 1,
            "AutoProcProgram": 1,
            "AutoProcProgramMessage": 5,  # environment, started, saturated twice, done
            "AutoProcProgramAttachment": 1,
        }
        step = second.program(program)
        assert step.status is Status.SUCCESS and step.environment == {
            "cluster": "local",
            "workers": 2,
        }


def test_refused_writes_are_kept_as_failed_and_do_not_block(paths: tuple[str, Path]) -> None:
    url, outbox = paths
    with DurableLims(url, outbox, id_wait=0) as lims:
        _dc, _job, (p1, _p2) = record_job(lims)
        lims.add_message(987654, "ERROR", "to a program that does not exist")
        orphan_job = lims.create_job(987654, "xrd_map", {})  # no such data collection
        orphan = lims.create_program(orphan_job, "integrate", "xrd_integrate")
        lims.set_status(orphan, "running")
        lims.set_status(p1, "success", "done")  # after the refused ones: still applied
        assert lims.flush(20)
        failed = lims.failed()
        assert [f.method for f in failed] == [
            "add_message",
            "create_job",
            "create_program",
            "set_status",
        ]
        assert "no processing program 987654" in failed[0].error
        assert "no data collection 987654" in failed[1].error
        assert "whose create failed" in failed[2].error and "whose create failed" in failed[3].error
        assert failed[0].args["message"] == "to a program that does not exist"
        assert lims.program(p1).status is Status.SUCCESS
        with pytest.raises(LimsError, match="never recorded"):
            lims.job(orphan_job)
        assert lims.pending() == 0


def test_refused_create_raises_when_the_call_waits(paths: tuple[str, Path]) -> None:
    url, outbox = paths
    with DurableLims(url, outbox, id_wait=10) as lims:
        lims.record_scan(make_scan())
        with pytest.raises(LimsError, match="no data collection 987654"):
            lims.create_job(987654, "xrd_map", {})


def test_input_that_can_never_be_recorded_raises_at_once(paths: tuple[str, Path]) -> None:
    url, outbox = paths
    with DurableLims(url, outbox, start=False) as lims:
        _dc, _job, (p1, _p2) = record_job(lims)
        with pytest.raises(LimsError, match="status"):
            lims.set_status(p1, "exploded")
        with pytest.raises(LimsError, match="severity"):
            lims.add_message(p1, "LOUD", "x")
        with pytest.raises(LimsError, match="attachment type"):
            lims.add_attachment(p1, "/x", "Picture")
        with pytest.raises(LimsError, match="not a local id"):
            lims.set_status(-999, "running")
        with pytest.raises(LimsError, match="visit"):
            lims.record_scan(make_scan(visit="not a visit"))
        with pytest.raises(LimsError, match="cannot keep"):
            lims.create_job(1, "r", {"x": object()})
        assert lims.pending() == 4


def test_arguments_round_trip() -> None:
    scan = make_scan(finished=True, end_time=T0)
    scan = ScanInfo(
        **{
            **scan.__dict__,
            "datasets": {"/entry/data": DatasetInfo("/entry/data", (5, 10), "<f4", (1, 10))},
            "nx_classes": frozenset({"NXentry", "NXdata"}),
        }
    )
    args = {"scan": scan, "at": T0, "path": Path("/a/b"), "k": {1: (2, 3)}, "$odd": None}
    assert _decode(_encode(args)) == args


# ---------------------------------------------------------------- MariaDB: a real outage

MARIADBD = "/usr/sbin/mariadbd"


def _server_up(timeout: float) -> bool:
    engine = create_engine(MARIADB_SERVER)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect():
                    return True
            except Exception:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.2)
    finally:
        engine.dispose()


def _daemon(*args: str) -> None:
    subprocess.run(
        ["start-stop-daemon", *args, "--exec", MARIADBD],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    pytest.importorskip("mysql.connector", reason="mysql-connector-python is not installed")
    if not _server_up(2):
        pytest.skip(f"MariaDB not reachable at {MARIADB_SERVER.rsplit('@', 1)[-1]}")
    if os.geteuid() != 0 or not shutil.which("start-stop-daemon") or not Path(MARIADBD).exists():
        pytest.skip("cannot stop and start MariaDB here (needs root, start-stop-daemon, mariadbd)")
    name = f"hpcproc_test_{uuid.uuid4().hex[:12]}"
    server = create_engine(MARIADB_SERVER, pool_pre_ping=True)  # survives the restart
    with server.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}`"))
    try:
        yield f"{MARIADB_SERVER}/{name}"
    finally:
        _server_up(60)
        with server.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        server.dispose()


def test_mariadb_stopped_mid_job_loses_and_duplicates_nothing(
    mariadb_database: str, tmp_path: Path
) -> None:
    url = mariadb_database
    lims = DurableLims(url, tmp_path / "outbox.sqlite", backoff=FAST)
    try:
        # A running job, recorded while the database is up.
        dc, job, (p1, p2) = record_job(lims)
        for p in (p1, p2):
            lims.set_environment(p, {"cluster": "local"})
            lims.set_status(p, "running")
        lims.set_progress(p1, "1/10")
        assert lims.flush(30)
        assert lims.failed() == []

        try:
            _daemon("--stop", "--retry", "10")  # MariaDB goes away mid-job
            assert not _server_up(0)
            t0 = time.monotonic()
            slowest = 0.0
            calls = [
                lambda: lims.set_progress(p1, "10/10"),
                lambda: lims.set_status(p1, "success", "integrated 10 frames"),
                lambda: lims.add_attachment(p1, tmp_path / "out.nxs", "Result", 1),
                lambda: lims.add_message(p2, "WARNING", "frame 7 saturated"),
                lambda: lims.set_status(p2, "failed", "fit diverged"),
                lambda: lims.add_attachment(p2, tmp_path / "fit.log", "Log", 2),
                lambda: lims.create_program(job, "report", "report"),
            ]
            for call in calls:
                start = time.monotonic()
                result = call()
                slowest = max(slowest, time.monotonic() - start)
            p3 = result
            lims.set_status(p3, "skipped")
            lims.set_status(p1, "running")  # a late update: ignored when applied
            assert slowest < 1.0, f"a write waited {slowest:.2f} s for the database"
            assert p3 < 0  # a local id: the database is down
            time.sleep(0.5)
            assert lims.pending() == 9 and lims.last_error
            assert time.monotonic() - t0 < 5
        finally:
            _daemon("--start", "--oknodo", "--background")
            assert _server_up(60), "MariaDB did not come back"

        assert lims.flush(60)
        assert lims.failed() == [] and lims.pending() == 0
        record = lims.job(job)
        ids = lims.resolve(job), lims.resolve(dc)
    finally:
        lims.close()

    assert [(s.step_id, s.status) for s in record.steps] == [
        ("step0", Status.SUCCESS),
        ("step1", Status.FAILED),
        ("report", Status.SKIPPED),
    ]
    s1, s2, _s3 = record.steps
    assert s1.message == "integrated 10 frames" and s2.message == "fit diverged"
    assert [m.message for m in s2.messages] == ["environment", "frame 7 saturated", "fit diverged"]
    assert [a.path.name for a in s1.attachments + s2.attachments] == ["out.nxs", "fit.log"]
    engine = create_engine(url)
    try:
        assert counts(engine) == {
            "DataCollection": 1,
            "ProcessingJob": 1,
            "ProcessingJobParameter": 2,
            "AutoProcProgram": 3,
            "AutoProcProgramMessage": 5,  # 2 environment, success, warning, failed
            "AutoProcProgramAttachment": 2,
        }
        assert (record.id, record.dc_id) == ids
    finally:
        engine.dispose()


def test_real_job_finishes_while_mariadb_is_down(
    mariadb_database: str, tmp_path: Path, sim_scan: Any, client: Any
) -> None:
    """The issue's test: MariaDB stops (the same daemon command that starts it) while a job
    runs; the job finishes regardless; MariaDB starts again and every record and final status
    is there, once."""
    from hpcproc.jobs import run_job
    from hpcproc.lims import Lims
    from hpcproc.lims.recording import finish, recording_lims
    from hpcproc.recipes import find_recipe

    url = mariadb_database
    lims = recording_lims(url, tmp_path / "home")
    stopped = threading.Event()

    def stop_once(step: str, done: int, total: int) -> None:
        if not stopped.is_set():  # first progress: the job is recorded and running
            stopped.set()
            _daemon("--stop", "--retry", "10")

    try:
        outcome = run_job(
            find_recipe("xrf-map"),
            sim_scan.path,
            {},
            lims=lims,
            client=client,
            progress=stop_once,
        )
        assert stopped.is_set() and not _server_up(0)
        assert outcome.steps == {"windows": Status.SUCCESS}  # processing never waited
        assert lims.pending() > 0  # the final records wait in the outbox
    finally:
        _daemon("--start", "--oknodo", "--background")
        assert _server_up(60), "MariaDB did not come back"
    assert lims.flush(60)
    job_id = lims.resolve(outcome.job_id)
    finish(lims, timeout=60)
    assert not list((tmp_path / "home" / "lims-outbox").glob("*.sqlite")), "outbox not emptied"

    with Lims(url) as db:
        record = db.job(job_id)
        (step,) = record.steps
        assert (step.step_id, step.status) == ("windows", Status.SUCCESS)
        assert [a.path for a in step.attachments] == [outcome.processed]
        engine = create_engine(url)
        try:
            rows = counts(engine)
        finally:
            engine.dispose()
    assert rows["ProcessingJob"] == 1 and rows["AutoProcProgram"] == 1
    assert rows["AutoProcProgramAttachment"] == 1 and rows["DataCollection"] == 1


def test_next_hpcproc_start_replays_a_dead_process_outbox(tmp_path: Path) -> None:
    """A process that died with writes in its outbox: the next recording process applies
    them before its own, and removes the emptied outbox."""
    from hpcproc.lims import Lims
    from hpcproc.lims.recording import finish, outbox_dir, recording_lims

    url = f"sqlite:///{tmp_path / 'lims.sqlite'}"
    home = tmp_path / "home"
    dead = DurableLims(url, outbox_dir(home) / "4242-dead.sqlite", start=False)
    dc = dead.record_scan(make_scan(tmp_path / "scan.nxs"))
    job = dead.create_job(dc, "xrd-map", {"npt": 2000})
    assert dc < 0 and job < 0 and dead.pending() == 2  # never applied: the process "died"
    dead.close(flush_timeout=0)

    lims = recording_lims(url, home)  # the next start
    finish(lims)
    with Lims(url) as db:
        (summary,) = db.jobs()
        assert summary.recipe == "xrd-map"
        assert db.job(summary.id).parameters == {"npt": 2000}
    assert not list(outbox_dir(home).glob("*.sqlite"))


def test_outbox_command_shows_replays_retries_and_discards(cli: Any, tmp_path: Path) -> None:
    """`hpcproc outbox`: what dead processes left (pending, refused) and what runs; replay;
    a refused write retried once its cause is mended (the record restored); another dropped."""
    from hpcproc import config
    from hpcproc.lims import Lims, default_lims_url
    from hpcproc.lims.recording import outbox_dir

    url, directory = default_lims_url(config.home()), outbox_dir(config.home())
    with Lims(url) as db:
        _dc, _job, (program,) = record_job(db, n_programs=1)  # type: ignore[arg-type]
    waiting = DurableLims(url, directory / "101-down.sqlite", start=False)  # the DB was down
    waiting.create_job(waiting.record_scan(make_scan(tmp_path / "b.nxs")), "xrf-map", {})
    waiting.close(flush_timeout=0)
    mended, dropped = directory / "102-refused.sqlite", directory / "103-refused.sqlite"
    for path, words in ((mended, "to a restored program"), (dropped, "to nowhere")):
        with DurableLims(url, path) as dead:
            dead.add_message(987654, "ERROR", words)
            dead.add_message(program, "INFO", f"after: {words}")  # applied all the same
            assert dead.flush(20) and len(dead.failed()) == 1
    alive = DurableLims(url, directory / "104-alive.sqlite")
    try:
        r = cli("outbox", "--json")
        assert r.exit_code == 1, r.output  # something is refused
        rows = {Path(f["path"]).name: f for f in json.loads(r.output)}
        assert rows["101-down.sqlite"]["pending"] == 2 and not rows["101-down.sqlite"]["in_use"]
        assert rows["102-refused.sqlite"]["failed"] == 1
        assert "no processing program 987654" in rows["102-refused.sqlite"]["last_error"]
        assert rows["104-alive.sqlite"]["in_use"] is True
        r = cli("status")  # the job listing says that records wait or were refused
        assert "LIMS outbox: 2 writes of stopped processes wait" in r.output
        assert "2 were refused" in r.output
        r = cli("outbox", "--refused")
        assert "#1" in r.output and "add_message: " in r.output and "gone" in r.output

        r = cli("outbox", "--replay")
        assert "replayed: 0 writes still pending" in r.output and r.exit_code == 1
        assert not (directory / "101-down.sqlite").exists()  # applied, then removed
        with Lims(url) as db:
            assert {j.recipe for j in db.jobs()} == {"xrd_map", "xrf-map"}

        r = cli("outbox", "--retry", str(directory / "104-alive.sqlite"))
        assert r.exit_code == 2 and "in use by a running process" in r.output

        with Lims(url) as db, db._engine.begin() as conn:  # the program restored from a backup
            conn.execute(
                isp.AutoProcProgram.__table__.insert().values(
                    autoProcProgramId=987654, processingCommandLine="restored"
                )
            )
        r = cli("outbox", "--retry", str(mended), "--discard", str(dropped))
        assert (
            "1 refused writes queued again" in r.output and "1 refused writes dropped" in r.output
        )
        assert r.exit_code == 0, r.output
        assert not mended.exists() and not dropped.exists()
        with Lims(url) as db:
            restored = db.program(987654)
            assert [m.message for m in restored.messages] == ["to a restored program"]
            assert len(db.program(program).messages) == 2
    finally:
        alive.close()
    r = cli("outbox", "--replay")  # the closed process's empty outbox goes too
    assert r.exit_code == 0 and "no LIMS outbox files" in r.output
