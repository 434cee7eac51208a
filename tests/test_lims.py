"""The LIMS adapter on ISPyB's models: SQLite (always) and MariaDB (when 127.0.0.1:3306 answers)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ispyb.sqlalchemy as isp
import pytest
from sqlalchemy import create_engine, delete, event, func, inspect, select, text
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.schema import CreateTable

from hpcproc.errors import LimsError
from hpcproc.lims import (
    JobRecord,
    JobSummary,
    Lims,
    ProgramRecord,
    default_lims_url,
    overall_status,
    parse_visit,
)
from hpcproc.lims.adapter import decode_parameter, encode_parameter, schema_tables
from hpcproc.scaninfo import ScanInfo
from hpcproc.status import Status

MARIADB_SERVER = os.environ.get(
    "HPCPROC_TEST_MARIADB", "mysql+mysqlconnector://root@127.0.0.1:3306"
)
T0 = datetime(2024, 5, 6, 10, 0, 0)  # whole seconds: MariaDB DATETIME keeps no fractions


def make_scan(
    path: str = "/dls/i18/data/2024/cm12345-1/i18-000001.nxs",
    visit: str | None = "cm12345-1",
    finished: bool = False,
    end_time: datetime | None = None,
    shape: tuple[int, ...] = (5, 10),
) -> ScanInfo:
    return ScanInfo(
        path=Path(path),
        scan_id="i18-000001",
        beamline="i18",
        visit=visit,
        title="XRF map of sample A",
        scan_command="mapscan x 0 1 10 y 0 1 5",
        start_time=T0,
        end_time=end_time,
        shape=shape,
        axes=("y", "x"),
        axis_values={"y": tuple(range(shape[0])), "x": tuple(range(shape[-1]))},
        axis_units={"y": "mm", "x": "mm"},
        finished=finished,
    )


# ---------------------------------------------------------------- fixtures

_WRITTEN_CHILD_FIRST = (
    isp.AutoProcProgramAttachment,
    isp.AutoProcProgramMessage,
    isp.AutoProcProgram,
    isp.ProcessingJobParameter,
    isp.ProcessingJob,
    isp.DataCollection,
    isp.DataCollectionGroup,
    isp.BLSession,
    isp.Proposal,
    isp.Person,
)


def mariadb_server():
    """The MariaDB server's engine, or skip the test naming where it was looked for."""
    pytest.importorskip("mysql.connector", reason="mysql-connector-python is not installed")
    server = create_engine(MARIADB_SERVER)
    where = f"{server.url.host}:{server.url.port or 3306}"  # 127.0.0.1:3306 unless overridden
    try:
        with server.connect():
            pass
    except Exception as exc:
        server.dispose()
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        pytest.skip(f"MariaDB not reachable at {where}: {reason}")
    return server


@contextmanager
def throwaway_mariadb() -> Iterator[str]:
    """The URL of a new MariaDB database hpcproc_test_<random>, dropped afterwards."""
    server = mariadb_server()
    name = f"hpcproc_test_{uuid.uuid4().hex[:12]}"
    with server.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}`"))
    try:
        yield f"{MARIADB_SERVER}/{name}"
    finally:
        server.dispose()  # a fresh connection: the server may have been restarted meanwhile
        with server.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        server.dispose()


@pytest.fixture(scope="module")
def mariadb_url() -> Iterator[str]:
    """A throwaway MariaDB database shared by this module's tests."""
    with throwaway_mariadb() as url:
        yield url


@pytest.fixture(params=["sqlite", "mariadb"])
def lims(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lims]:
    if request.param == "sqlite":
        db = Lims(f"sqlite:///{tmp_path}/lims.sqlite")
    else:
        url = request.getfixturevalue("mariadb_url")
        db = Lims(url)
        # One database per module (creating the schema takes ~1 s): empty it for each test.
        with db._engine.begin() as conn:
            for model in _WRITTEN_CHILD_FIRST:
                conn.execute(delete(model))
    try:
        yield db
    finally:
        db.close()


def one_program(lims: Lims, step_id: str = "integrate", uses: str = "xrd_integrate") -> int:
    dc = lims.record_scan(make_scan())
    job = lims.create_job(dc, "xrd-ct", {"npt": 2000})
    return lims.create_program(job, step_id, uses)


# ---------------------------------------------------------------- SQLite schema


def test_schema_created_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "lims.sqlite"
    with Lims(f"sqlite:///{path}") as db:
        assert path.exists()
        names = set(inspect(db._engine).get_table_names())
        for model in _WRITTEN_CHILD_FIRST:
            assert model.__tablename__ in names
        assert names == {t.name for t in schema_tables()}  # FK targets included, nothing else
        with db._engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert db.jobs() == []
    with Lims(path) as again:  # reopening (and a Path) works, schema kept
        assert again.jobs() == []


def test_compile_rules_create_all_of_ispyb_on_sqlite() -> None:
    engine = create_engine("sqlite://")
    isp.Base.metadata.create_all(engine)
    assert len(inspect(engine).get_table_names()) == len(isp.Base.metadata.tables)
    ddl = str(CreateTable(isp.BLSession.__table__).compile(dialect=sqlite.dialect()))
    assert "TINYINT" not in ddl and "current_timestamp()" not in ddl
    assert "DEFAULT CURRENT_TIMESTAMP" in ddl
    # The MySQL dialect is untouched.
    ddl = str(CreateTable(isp.BLSession.__table__).compile(dialect=mysql.dialect()))
    assert "TINYINT(1)" in ddl and "current_timestamp()" in ddl
    engine.dispose()


def test_in_memory_sqlite() -> None:
    with Lims("sqlite://") as db:
        program = one_program(db)
        assert db.set_status(program, Status.RUNNING)
        assert db.program(program).status is Status.RUNNING


def test_default_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPCPROC_LIMS_URL", raising=False)
    assert default_lims_url(tmp_path) == f"sqlite:///{tmp_path}/lims.sqlite"
    monkeypatch.setenv("HPCPROC_LIMS_URL", "mysql+mysqlconnector://u@db/ispyb")
    assert default_lims_url(tmp_path) == "mysql+mysqlconnector://u@db/ispyb"


def test_password_never_shown() -> None:
    with pytest.raises(LimsError) as err:
        Lims("mysql+mysqlconnector://user:topsecret@127.0.0.1:1/ispyb")
    assert "topsecret" not in str(err.value)
    assert "***" in str(err.value)
    with pytest.raises(LimsError):
        Lims("not a url")
    with pytest.raises(LimsError, match="mysql\\+mysqlconnector") as err:
        Lims("nosuchdb://user:topsecret@host/db")  # unknown dialect: a clear line, no password
    assert "topsecret" not in str(err.value)


def test_parse_visit() -> None:
    assert parse_visit("cm12345-1") == ("cm", "12345", 1)
    assert parse_visit("mx23694-120") == ("mx", "23694", 120)
    assert parse_visit("ma1234") == ("ma", "1234", 1)
    assert parse_visit(None) == ("local", "0", 1)
    with pytest.raises(LimsError, match="not like"):
        parse_visit("my visit")


def test_parameter_encoding() -> None:
    for value in [2000, 1.5, True, None, [1, 2], {"a": [1.0]}, "2000", "true", "null", "text", ""]:
        assert decode_parameter(encode_parameter(value)) == value
        assert type(decode_parameter(encode_parameter(value))) is type(value)
    assert encode_parameter("/data/a.poni") == "/data/a.poni"  # plain strings stay readable
    assert decode_parameter(encode_parameter(Path("/data/a.poni"))) == "/data/a.poni"


def test_overall_status_rule() -> None:
    S = Status
    assert overall_status([]) is S.QUEUED
    assert overall_status([S.QUEUED, S.QUEUED]) is S.QUEUED
    assert overall_status([S.SUCCESS, S.QUEUED]) is S.RUNNING
    assert overall_status([S.RUNNING, S.QUEUED]) is S.RUNNING
    assert overall_status([S.RUNNING, S.FAILED]) is S.FAILED
    assert overall_status([S.SUCCESS, S.SKIPPED]) is S.SUCCESS
    assert overall_status([S.SKIPPED, S.SKIPPED]) is S.SKIPPED
    assert overall_status([S.SUCCESS, S.SUCCESS]) is S.SUCCESS


# ---------------------------------------------------------------- lifecycle (sqlite + mariadb)


def test_full_insert_chain(lims: Lims) -> None:
    scan = make_scan()
    dc = lims.record_scan(scan, experiment_type="XRF map")
    job = lims.create_job(
        dc,
        "xrd-ct",
        {"npt": 2000, "poni": "/dls/i18/cal.poni"},
        display_name="XRD-CT",
        comments="from test",
        automatic=True,
    )
    p1 = lims.create_program(job, "integrate", "xrd_integrate")
    p2 = lims.create_program(job, "reconstruct", "tomo_reconstruct")

    record = lims.job(job)
    assert isinstance(record, JobRecord)
    assert (record.id, record.dc_id, record.recipe) == (job, dc, "xrd-ct")
    assert (record.display_name, record.comments, record.automatic) == ("XRD-CT", "from test", True)
    assert record.scan_file == scan.path
    assert record.parameters == {"npt": 2000, "poni": "/dls/i18/cal.poni"}
    assert isinstance(record.created, datetime)
    assert abs(record.created - datetime.now()) < timedelta(minutes=1)
    assert [(s.id, s.step_id, s.uses) for s in record.steps] == [
        (p1, "integrate", "xrd_integrate"),
        (p2, "reconstruct", "tomo_reconstruct"),
    ]
    assert all(s.status is Status.QUEUED and s.job_id == job for s in record.steps)
    assert record.status is Status.QUEUED

    with lims._engine.connect() as conn:
        row = conn.execute(
            select(
                isp.DataCollection.imageDirectory,
                isp.DataCollection.fileTemplate,
                isp.DataCollection.numberOfImages,
                isp.DataCollection.runStatus,
                isp.DataCollection.comments,
                isp.DataCollection.startTime,
                isp.DataCollectionGroup.experimentType,
                isp.BLSession.visit_number,
                isp.BLSession.beamLineName,
                isp.Proposal.proposalCode,
                isp.Proposal.proposalNumber,
            )
            .select_from(isp.DataCollection)
            .join(
                isp.DataCollectionGroup,
                isp.DataCollectionGroup.dataCollectionGroupId
                == isp.DataCollection.dataCollectionGroupId,
            )
            .join(isp.BLSession, isp.BLSession.sessionId == isp.DataCollectionGroup.sessionId)
            .join(isp.Proposal, isp.Proposal.proposalId == isp.BLSession.proposalId)
            .where(isp.DataCollection.dataCollectionId == dc)
        ).one()
        recipe_column = conn.execute(
            select(isp.ProcessingJob.recipe).where(isp.ProcessingJob.processingJobId == job)
        ).scalar()
        commands = conn.execute(
            select(
                isp.AutoProcProgram.processingCommandLine, isp.AutoProcProgram.processingPrograms
            )
            .where(isp.AutoProcProgram.processingJobId == job)
            .order_by(isp.AutoProcProgram.autoProcProgramId)
        ).all()
    assert row.imageDirectory == "/dls/i18/data/2024/cm12345-1/"
    assert row.fileTemplate == "i18-000001.nxs"
    assert row.numberOfImages == 50
    assert row.runStatus == "running"
    assert "XRF map of sample A" in row.comments and "mapscan" in row.comments
    assert row.startTime == T0
    assert row.experimentType == "XRF map"
    assert (row.proposalCode, row.proposalNumber, row.visit_number) == ("cm", "12345", 1)
    assert row.beamLineName == "i18"
    assert recipe_column == "xrd-ct"
    assert [tuple(c) for c in commands] == [
        ("integrate", "xrd_integrate"),
        ("reconstruct", "tomo_reconstruct"),
    ]


def test_record_scan_idempotent(lims: Lims) -> None:
    dc = lims.record_scan(make_scan())
    assert lims.record_scan(make_scan()) == dc
    end = T0 + timedelta(minutes=5)
    assert lims.record_scan(make_scan(finished=True, end_time=end, shape=(6, 10))) == dc
    assert lims.record_scan(make_scan(finished=False)) == dc  # late: never back to running
    other = lims.record_scan(make_scan(path="/dls/i18/data/2024/cm12345-1/i18-000002.nxs"))
    local = lims.record_scan(make_scan(path="/tmp/scan.nxs", visit=None))
    assert len({dc, other, local}) == 3
    with lims._engine.connect() as conn:
        DC = isp.DataCollection
        rows = {
            r.dataCollectionId: r
            for r in conn.execute(
                select(
                    DC.dataCollectionId, DC.runStatus, DC.endTime, DC.numberOfImages, DC.SESSIONID
                )
            )
        }
        proposals = conn.execute(
            select(isp.Proposal.proposalCode, isp.Proposal.proposalNumber).order_by(
                isp.Proposal.proposalId
            )
        ).all()
        assert conn.execute(select(isp.Person.personId)).all() != []
    assert len(rows) == 3
    assert rows[dc].runStatus == "DataCollection Successful"
    assert rows[dc].endTime == end
    assert rows[dc].numberOfImages == 60
    assert rows[dc].SESSIONID == rows[other].SESSIONID != rows[local].SESSIONID
    assert [tuple(p) for p in proposals] == [("cm", "12345"), ("local", "0")]
    with pytest.raises(LimsError, match="experiment type"):
        lims.record_scan(make_scan(), experiment_type="not a type")


def test_parameters_round_trip_typed(lims: Lims) -> None:
    dc = lims.record_scan(make_scan())
    params = {
        "npt": 2000,
        "centre": None,
        "scale": 0.5,
        "flip": True,
        "windows": {"Fe": [6300.0, 6500.0], "Cu": [7950, 8150]},
        "elements": ["Fe", "Cu"],
        "poni": "/dls/i18/cal.poni",
        "number_as_text": "2000",
        "true_as_text": "true",
        "empty": "",
        "unicode": "Å ring — θ",
        "path": Path("/dls/i18/mask.edf"),
    }
    job = lims.create_job(dc, "xrf-map", params)
    got = lims.job(job).parameters
    expected = {**params, "path": "/dls/i18/mask.edf"}
    assert got == expected
    for key, value in expected.items():
        assert type(got[key]) is type(value), key
    with pytest.raises(LimsError, match="too long"):
        lims.create_job(dc, "xrf-map", {"big": list(range(1000))})
    long_recipe = lims.create_job(dc, "r" * 80, {})
    assert lims.job(long_recipe).recipe == "r" * 47 + "..."  # cut to the 50-character column


def test_status_lifecycle_with_times(lims: Lims) -> None:
    program = one_program(lims)
    record = lims.program(program)
    assert isinstance(record, ProgramRecord)
    assert record.status is Status.QUEUED and record.start is None and record.end is None
    assert record.created is not None

    assert lims.set_status(program, Status.RUNNING, "integrating", at=T0)
    record = lims.program(program)
    assert (record.status, record.start, record.end) == (Status.RUNNING, T0, None)
    assert record.message == "integrating"

    done = T0 + timedelta(seconds=42)
    assert lims.set_status(program, Status.SUCCESS, "integrated 50 frames", at=done)
    record = lims.program(program)
    assert (record.status, record.start, record.end) == (Status.SUCCESS, T0, done)
    assert record.message == "integrated 50 frames"
    assert [(m.severity, m.message) for m in record.messages] == [
        ("INFO", "integrating"),
        ("INFO", "integrated 50 frames"),
    ]
    # Aware times are stored as local time.
    aware = lims.create_program(record.job_id, "other", "xrf_windows")
    at = datetime(2024, 5, 6, 8, 0, 0, tzinfo=UTC)
    assert lims.set_status(aware, "running", at=at)
    assert lims.program(aware).start == at.astimezone().replace(tzinfo=None)
    # Straight from queued to success: start = end = at.
    quick = lims.create_program(record.job_id, "quick", "xrf_windows")
    assert lims.set_status(quick, Status.SUCCESS, at=done)
    assert (lims.program(quick).start, lims.program(quick).end) == (done, done)


def test_replayed_and_backwards_updates_ignored(lims: Lims) -> None:
    program = one_program(lims)
    assert lims.set_status(program, Status.RUNNING, "started", at=T0)
    assert not lims.set_status(program, Status.RUNNING, "started again", at=T0 + timedelta(1))
    assert not lims.set_status(program, Status.QUEUED)
    end = T0 + timedelta(seconds=10)
    assert lims.set_status(program, Status.FAILED, "boom", at=end)
    before = lims.program(program)
    for late in (Status.RUNNING, Status.QUEUED, Status.SUCCESS, Status.FAILED, Status.SKIPPED):
        assert not lims.set_status(program, late, f"late {late}", at=end + timedelta(seconds=5))
    after = lims.program(program)
    assert after == before
    assert (after.status, after.start, after.end, after.message) == (
        Status.FAILED,
        T0,
        end,
        "boom",
    )
    assert [m.severity for m in after.messages] == ["INFO", "ERROR"]
    with pytest.raises(LimsError, match="no processing program"):
        lims.set_status(10**8, Status.RUNNING)


def test_skipped_versus_failed(lims: Lims) -> None:
    program = one_program(lims)
    job = lims.program(program).job_id
    failed = lims.create_program(job, "b", "xrd_integrate")
    late_skip = lims.create_program(job, "c", "xrd_integrate")

    assert lims.set_status(program, Status.SKIPPED, "no frames", at=T0)
    assert lims.set_status(failed, Status.FAILED, "crashed", at=T0)
    assert lims.set_status(late_skip, Status.RUNNING, at=T0)
    assert lims.set_status(late_skip, Status.SKIPPED, at=T0 + timedelta(seconds=1))

    skipped = lims.program(program)
    assert (skipped.status, skipped.start, skipped.end) == (Status.SKIPPED, None, T0)
    assert lims.program(failed).status is Status.FAILED
    assert (lims.program(failed).start, lims.program(failed).end) == (T0, T0)
    again = lims.program(late_skip)
    assert again.status is Status.SKIPPED and again.start is None
    assert "running since" in again.messages[0].message
    with lims._engine.connect() as conn:
        rows = dict(
            conn.execute(
                select(isp.AutoProcProgram.autoProcProgramId, isp.AutoProcProgram.processingStatus)
            ).all()
        )
    assert rows[program] == 0 and rows[failed] == 0  # told apart by the start time only


def test_messages_and_attachments(lims: Lims, tmp_path: Path) -> None:
    program = one_program(lims)
    lims.add_message(program, "warning", "beam dump at frame 12")
    long = "x" * 500
    lims.add_message(program, "ERROR", long, "traceback ...")
    lims.add_message(program, "INFO", "note", "details")
    with pytest.raises(LimsError, match="severity"):
        lims.add_message(program, "DEBUG", "nope")
    lims.add_attachment(program, tmp_path / "out" / "i18-000001_processed.nxs")
    lims.add_attachment(program, "/logs/integrate.log", file_type="log", importance_rank=2)
    with pytest.raises(LimsError, match="attachment type"):
        lims.add_attachment(program, "/x", file_type="Image")

    record = lims.program(program)
    assert (record.messages[0].severity, record.messages[0].message) == (
        "WARNING",
        "beam dump at frame 12",
    )
    error = record.messages[1]
    assert error.severity == "ERROR" and len(error.message) == 200
    assert error.description is not None and error.description.startswith(long)
    assert error.description.endswith("traceback ...")
    assert record.messages[2].description == "details"
    assert [(a.file_type, a.path, a.importance_rank) for a in record.attachments] == [
        ("Result", tmp_path / "out" / "i18-000001_processed.nxs", 1),
        ("Log", Path("/logs/integrate.log"), 2),
    ]
    with lims._engine.connect() as conn:
        name, where = conn.execute(
            select(
                isp.AutoProcProgramAttachment.fileName, isp.AutoProcProgramAttachment.filePath
            ).order_by(isp.AutoProcProgramAttachment.autoProcProgramAttachmentId)
        ).first()
    assert (name, where) == ("i18-000001_processed.nxs", str(tmp_path / "out"))
    # A long status message: cut in processingMessage, whole in the message's description.
    assert lims.set_status(program, Status.FAILED, "E" * 1000)
    record = lims.program(program)
    assert record.message is not None and len(record.message) == 255
    assert record.messages[-1].description == "E" * 1000


def test_jobs_order_and_overall_status(lims: Lims) -> None:
    dc = lims.record_scan(make_scan())
    states = {
        "all-queued": [],
        "one-running": [Status.RUNNING],
        "half-done": [Status.SUCCESS],
        "one-failed": [Status.SUCCESS, Status.FAILED],
        "done": [Status.SUCCESS, Status.SKIPPED],
    }
    ids = {}
    for recipe, moves in states.items():
        job = lims.create_job(dc, recipe, {})
        ids[recipe] = job
        programs = [lims.create_program(job, f"s{i}", "xrd_integrate") for i in range(2)]
        for program, move in zip(programs, moves, strict=False):
            assert lims.set_status(program, move)
    empty = lims.create_job(dc, "no-steps", {})

    summaries = lims.jobs()
    assert all(isinstance(s, JobSummary) for s in summaries)
    assert [s.id for s in summaries] == [empty, *reversed(ids.values())]
    by_recipe = {s.recipe: s for s in summaries}
    assert by_recipe["all-queued"].status is Status.QUEUED
    assert by_recipe["one-running"].status is Status.RUNNING
    assert by_recipe["half-done"].status is Status.RUNNING
    assert by_recipe["one-failed"].status is Status.FAILED
    assert by_recipe["done"].status is Status.SUCCESS
    assert by_recipe["no-steps"].status is Status.QUEUED
    assert by_recipe["no-steps"].n_steps == 0 and by_recipe["done"].n_steps == 2
    assert all(s.scan_file == make_scan().path for s in summaries)
    assert [s.id for s in lims.jobs(limit=2)] == [empty, ids["done"]]
    assert lims.job(ids["one-failed"]).status is Status.FAILED
    created = [s.created for s in summaries]
    assert created == sorted(created, reverse=True)


def test_missing_records(lims: Lims) -> None:
    with pytest.raises(LimsError, match="no processing job 123456"):
        lims.job(123456)
    with pytest.raises(LimsError, match="no processing program"):
        lims.program(123456)
    with pytest.raises(LimsError, match="no data collection"):
        lims.create_job(123456, "x", {})
    with pytest.raises(LimsError, match="no processing job"):
        lims.create_program(123456, "a", "b")
    with pytest.raises(LimsError, match="no processing program 123456"):
        lims.add_message(123456, "INFO", "x")
    with pytest.raises(LimsError, match="no processing program 123456"):
        lims.add_attachment(123456, "/x.log", "Log")
    with pytest.raises(LimsError, match="no processing program 123456"):
        lims.set_environment(123456, {"a": 1})
    assert lims.jobs() == []  # nothing half-written


def test_set_environment_truncation(lims: Lims) -> None:
    program = one_program(lims)
    env = {
        "host": "cs05r-sc-com01",
        "pid": 4242,
        "modules": ["pyfai/2024.5", "x" * 300],  # too big: dropped
        "cluster": "slurm",
        "job": "12345",
        "path": "/dls/" + "p" * 150,
        "threads": 8,
        "note": "n" * 80,
    }
    lims.set_environment(program, env)
    lims.set_environment(program, env)  # the same again: no error
    record = lims.program(program)
    with lims._engine.connect() as conn:
        stored = conn.execute(
            select(isp.AutoProcProgram.processingEnvironment).where(
                isp.AutoProcProgram.autoProcProgramId == program
            )
        ).scalar()
    assert stored is not None and len(stored) <= 255
    assert json.loads(stored) == record.environment
    assert "modules" not in record.environment and "note" not in record.environment
    assert record.environment["host"] == "cs05r-sc-com01"
    assert record.environment["threads"] == 8
    assert list(record.environment) == ["host", "pid", "cluster", "job", "path", "threads"]
    info = [m for m in record.messages if m.message == "environment"]
    assert len(info) == 2 and info[0].severity == "INFO"
    assert json.loads(info[0].description or "") == env


def test_thread_safety_none_lost(lims: Lims) -> None:
    dc = lims.record_scan(make_scan())
    job = lims.create_job(dc, "threads", {})
    n_threads, per_thread = 4, 25  # 4 updates each: 100 updates per thread
    programs = [
        [lims.create_program(job, f"t{t}-{i}", "xrd_integrate") for i in range(per_thread)]
        for t in range(n_threads)
    ]
    errors: list[BaseException] = []

    def work(mine: list[int]) -> None:
        try:
            for program in mine:
                assert lims.set_status(program, Status.RUNNING, "start")
                lims.add_message(program, "INFO", "half way")
                lims.add_message(program, "WARNING", "slow")
                assert lims.set_status(program, Status.SUCCESS, "done")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(mine,)) for mine in programs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    record = lims.job(job)
    assert len(record.steps) == n_threads * per_thread
    assert all(s.status is Status.SUCCESS for s in record.steps)
    assert all(len(s.messages) == 4 for s in record.steps)
    assert record.status is Status.SUCCESS


def _run_all(threads: list[threading.Thread], other: Lims) -> None:
    """Start the racing threads, wait for them all, then close the second adapter."""
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()


def test_racing_updates_apply_once(lims: Lims) -> None:
    """Several writers (threads, and a second adapter standing in for another process) race
    the same transitions on the same steps: each move is applied exactly once."""
    dc = lims.record_scan(make_scan())
    job = lims.create_job(dc, "race", {})
    programs = [lims.create_program(job, f"p{i}", "xrd_integrate") for i in range(20)]
    other = Lims(lims._url.render_as_string(hide_password=False))
    wins: list[tuple[int, Status]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def race(db: Lims, final: Status) -> None:
        barrier.wait()
        for program in programs:
            for status in (Status.RUNNING, final):
                if db.set_status(program, status, f"{status} by {threading.get_ident()}"):
                    with lock:
                        wins.append((program, status))

    finals = [Status.SUCCESS, Status.FAILED, Status.SUCCESS, Status.FAILED]
    threads = [
        threading.Thread(target=race, args=(lims if i % 2 else other, final))
        for i, final in enumerate(finals)
    ]
    _run_all(threads, other)
    for program in programs:
        moves = [s for p, s in wins if p == program]
        record = lims.program(program)
        assert moves.count(Status.RUNNING) <= 1
        assert len([s for s in moves if s.final]) == 1
        assert record.status is next(s for s in moves if s.final)
        assert len(record.messages) == len(moves)  # one message per applied move, none extra


def test_swap_parameter_is_compare_and_set(lims: Lims) -> None:
    """Of writers racing to change one job parameter from the same value (two staff approving
    one job, through two adapters as two processes would), exactly one wins."""
    dc = lims.record_scan(make_scan())
    job = lims.create_job(dc, "tomo", {"hpcproc.approval": "awaiting", "npt": 2000})
    assert not lims.swap_parameter(job, "hpcproc.approval", "approved", "x")  # not the value
    assert not lims.swap_parameter(job, "no_such_key", "awaiting", "x")
    other = Lims(lims._url.render_as_string(hide_password=False))
    barrier = threading.Barrier(6)
    wins: list[str] = []

    def race(db: Lims, who: str) -> None:
        barrier.wait()
        if db.swap_parameter(job, "hpcproc.approval", "awaiting", f"approved by {who}"):
            wins.append(who)

    threads = [
        threading.Thread(target=race, args=(other if i % 2 else lims, f"u{i}")) for i in range(6)
    ]
    _run_all(threads, other)
    assert len(wins) == 1
    assert lims.job(job).parameters == {"hpcproc.approval": f"approved by {wins[0]}", "npt": 2000}


def test_add_parameter_once_has_one_winner(lims: Lims) -> None:
    """Writers racing to add the same job parameter (two people cancelling one job, through
    two adapters as two processes would): exactly one adds it, and only one row exists."""
    dc = lims.record_scan(make_scan())
    job = lims.create_job(dc, "xrf", {"npt": 2000})
    assert lims.job_parameter(job, "hpcproc.cancel") is None
    assert lims.job_parameter(job, "npt") == 2000
    other = Lims(lims._url.render_as_string(hide_password=False))
    barrier = threading.Barrier(6)
    wins: list[str] = []
    errors: list[BaseException] = []

    def race(db: Lims, who: str) -> None:
        barrier.wait()
        try:
            if db.add_parameter_once(job, "hpcproc.cancel", f"cancelled by {who}"):
                wins.append(who)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=race, args=(other if i % 2 else lims, f"u{i}")) for i in range(6)
    ]
    _run_all(threads, other)
    assert errors == [] and len(wins) == 1
    assert lims.job_parameter(job, "hpcproc.cancel") == f"cancelled by {wins[0]}"
    with lims._engine.connect() as conn:
        rows = conn.execute(
            select(func.count()).where(
                isp.ProcessingJobParameter.processingJobId == job,
                isp.ProcessingJobParameter.parameterKey == "hpcproc.cancel",
            )
        ).scalar()
    assert rows == 1
    assert not lims.add_parameter_once(job, "npt", 1000)  # a recipe's own: never overwritten
    assert lims.job(job).parameters["npt"] == 2000


def test_compare_and_set_retries_after_a_concurrent_move(lims: Lims) -> None:
    """Another writer moves the step just before our compare-and-set update: ours still applies
    (it is a forward move from the new state) and keeps the other writer's start time."""
    program = one_program(lims)
    other = Lims(lims._url.render_as_string(hide_password=False))
    sneaked: list[bool] = []

    def before_update(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and not sneaked:
            sneaked.append(other.set_status(program, Status.RUNNING, "other", at=T0))

    event.listen(lims._engine, "before_cursor_execute", before_update)
    try:
        assert lims.set_status(program, Status.SUCCESS, "mine", at=T0 + timedelta(seconds=5))
    finally:
        event.remove(lims._engine, "before_cursor_execute", before_update)
        other.close()
    assert sneaked == [True]
    record = lims.program(program)
    assert (record.status, record.start, record.end) == (
        Status.SUCCESS,
        T0,  # kept from the other writer's move
        T0 + timedelta(seconds=5),
    )
    assert [m.message for m in record.messages] == ["other", "mine"]


def test_batch_commits_together_or_not_at_all(lims: Lims) -> None:
    """Group commit: writes in ``batch()`` are one transaction, invisible to other connections
    until it ends; an exception rolls every one of them back."""
    program = one_program(lims)
    other = Lims(lims._url.render_as_string(hide_password=False))
    try:
        with lims.batch():
            lims.set_status(program, Status.RUNNING, "started", at=T0)
            second = lims.create_program(lims.program(program).job_id, "reduce", "xrf_windows")
            lims.add_message(second, "INFO", "in the same batch")
            assert other.program(program).status is Status.QUEUED  # not committed yet
        assert other.program(program).status is Status.RUNNING
        assert [m.message for m in other.program(second).messages] == ["in the same batch"]

        with pytest.raises(LimsError), lims.batch():
            lims.set_status(program, Status.SUCCESS, "done")
            lims.add_message(10**9, "INFO", "no such program")  # refused: all rolled back
        record = other.program(program)
        assert record.status is Status.RUNNING
        assert [m.message for m in record.messages] == ["started"]
    finally:
        other.close()


def test_processes_opening_a_new_sqlite_lims_at_once(tmp_path: Path) -> None:
    """The launcher, its outbox applier and `hpcproc status` may all open a new LIMS file at
    the same moment: each waits for the schema the first creates, none fails."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'lims.sqlite'}"
    code = f"from hpcproc.lims import Lims; Lims({url!r}).jobs(); print('ok')"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o.strip() for o, _e in outs] == ["ok"] * 4, [e[-500:] for _o, e in outs]
