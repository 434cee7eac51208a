"""LIMS queries (visits, look-ups, search) and the schema check, on SQLite and MariaDB.

MariaDB runs when 127.0.0.1:3306 answers (root, no password; HPCPROC_TEST_MARIADB overrides);
each test that needs a database of its own gets a fresh ``hpcproc_test_<random>``, dropped after.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import ispyb.sqlalchemy as isp
import pytest
from sqlalchemy import create_engine, delete, event, insert, inspect, text, update
from sqlalchemy.engine import make_url
from test_lims import _WRITTEN_CHILD_FIRST, T0, mariadb_server, throwaway_mariadb
from test_lims import mariadb_url as mariadb_url  # the module's MariaDB database (fixture)

from hpcproc.errors import LimsError
from hpcproc.lims import Lims
from hpcproc.lims.adapter import schema_tables
from hpcproc.lims.queries import (
    JobListing,
    data_collection_for_file,
    find_jobs,
    jobs_for_data_collection,
    visit_jobs,
)
from hpcproc.lims.schema_check import REQUIRED, SchemaError
from hpcproc.scaninfo import ScanInfo
from hpcproc.status import Status

SECRET = "s3cr3t-Pw_" + uuid.uuid4().hex[:8]


def scan(path: str, visit: str | None, title: str) -> ScanInfo:
    return ScanInfo(
        path=Path(path),
        scan_id=Path(path).stem,
        beamline="i18",
        visit=visit,
        title=title,
        scan_command="mapscan x 0 1 4 y 0 1 2",
        start_time=T0,
        end_time=None,
        shape=(2, 4),
        axes=("y", "x"),
        axis_values={"y": (0.0, 1.0), "x": (0.0, 1.0, 2.0, 3.0)},
        axis_units={"y": "mm", "x": "mm"},
        finished=True,
    )


# ---------------------------------------------------------------- fixtures


def _server():
    """The MariaDB server engine, or skip naming where it was looked for."""
    return mariadb_server()


@pytest.fixture
def fresh_mariadb() -> Iterator[str]:
    """An empty MariaDB database of this test's own, dropped afterwards."""
    with throwaway_mariadb() as url:
        yield url


@pytest.fixture(params=["sqlite", "mariadb"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database (nothing created yet)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/lims.sqlite"
    return request.getfixturevalue("fresh_mariadb")


@pytest.fixture(params=["sqlite", "mariadb"])
def lims(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lims]:
    if request.param == "sqlite":
        db = Lims(f"sqlite:///{tmp_path}/lims.sqlite")
    else:
        db = Lims(request.getfixturevalue("mariadb_url"))
        with db._engine.begin() as conn:  # one database per module: empty it for each test
            for model in _WRITTEN_CHILD_FIRST:
                conn.execute(delete(model))
    try:
        yield db
    finally:
        db.close()


def _execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


# ---------------------------------------------------------------- schema check


def test_fresh_database_gets_the_schema(empty_url: str) -> None:
    with Lims(empty_url) as db:
        assert set(db.schema.created) == {t.name for t in schema_tables()}
        assert db.schema.patches is None  # no ISPyB SchemaStatus table
        assert "created 43 tables" in db.schema.describe()
    with Lims(empty_url) as again:
        assert again.schema.created == ()
        assert again.jobs() == []


def test_missing_column_refused(empty_url: str) -> None:
    Lims(empty_url).close()
    _execute(empty_url, "ALTER TABLE AutoProcProgram DROP COLUMN processingStatus")
    with pytest.raises(SchemaError) as err:
        Lims(empty_url)
    message = str(err.value)
    assert "\n" not in message
    assert "AutoProcProgram.processingStatus missing" in message
    assert make_url(empty_url).render_as_string(hide_password=True) in message
    assert isinstance(err.value, LimsError)


def test_wrong_table_made_by_hand_refused(empty_url: str) -> None:
    _execute(
        empty_url,
        "CREATE TABLE ProcessingJob (processingJobId INTEGER PRIMARY KEY, recipe VARCHAR(50))",
    )
    with pytest.raises(SchemaError, match=r"ProcessingJob\.dataCollectionId") as err:
        Lims(empty_url)
    assert "ProcessingJob.displayName" in str(err.value)
    engine = create_engine(empty_url)
    assert inspect(engine).get_table_names() == ["ProcessingJob"]  # nothing created around it
    engine.dispose()


def test_foreign_database_never_altered(empty_url: str) -> None:
    _execute(empty_url, "CREATE TABLE wiki_page (id INTEGER PRIMARY KEY, body TEXT)")
    with pytest.raises(SchemaError, match="hpcproc did not create") as err:
        Lims(empty_url)
    for name in REQUIRED:
        assert name in str(err.value)
    assert "wiki_page" in str(err.value)
    engine = create_engine(empty_url)
    assert inspect(engine).get_table_names() == ["wiki_page"]
    engine.dispose()


def test_partly_created_schema_is_completed(empty_url: str) -> None:
    engine = create_engine(empty_url)
    later = {"AutoProcProgram", "AutoProcProgramMessage", "AutoProcProgramAttachment"}
    isp.Base.metadata.create_all(engine, tables=[t for t in schema_tables() if t.name not in later])
    engine.dispose()
    with Lims(empty_url) as db:
        assert set(db.schema.created) == later
        assert db.record_scan(scan("/d/a.nxs", "cm1-1", "t")) > 0


def test_ispyb_schema_status_reported(empty_url: str, caplog: pytest.LogCaptureFixture) -> None:
    Lims(empty_url).close()
    engine = create_engine(empty_url)
    isp.SchemaStatus.__table__.create(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(isp.SchemaStatus.__table__),
            [
                {"scriptName": "2024_01_10_a.sql", "schemaStatus": "DONE", "recordTimeStamp": T0},
                {
                    "scriptName": "2024_02_20_b.sql",
                    "schemaStatus": "ERROR",
                    "recordTimeStamp": T0 + timedelta(days=1),
                },
            ],
        )
    engine.dispose()
    with caplog.at_level(logging.INFO, logger="hpcproc.lims.schema_check"), Lims(empty_url) as db:
        report = db.schema
    assert [p.script for p in report.patches] == ["2024_01_10_a.sql", "2024_02_20_b.sql"]
    assert report.latest_patch == "2024_02_20_b.sql"
    assert [p.script for p in report.unfinished_patches] == ["2024_02_20_b.sql"]
    assert "2 ISPyB schema patches" in report.describe()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "2024_02_20_b.sql (ERROR)" in warnings[0].getMessage()


def test_not_null_column_unknown_to_ispyb_refused(fresh_mariadb: str) -> None:
    Lims(fresh_mariadb).close()
    _execute(fresh_mariadb, "ALTER TABLE ProcessingJob ADD COLUMN site_code INT NOT NULL")
    with pytest.raises(SchemaError, match=r"ProcessingJob\.site_code is NOT NULL"):
        Lims(fresh_mariadb)


# ---------------------------------------------------------------- credentials


def test_wrong_password_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    server = _server()
    url = server.url.set(password=SECRET).render_as_string(hide_password=False)
    server.dispose()
    with caplog.at_level(logging.DEBUG), pytest.raises(LimsError) as err:
        Lims(url + "/ispyb")
    message = str(err.value)
    assert SECRET not in message and "***" in message
    assert "Access denied" in message
    assert SECRET not in caplog.text


@pytest.fixture
def user_with_password(fresh_mariadb: str) -> Iterator[str]:
    """A MariaDB user with a password, allowed on the fresh database: its URL."""
    server = _server()
    user = f"hpc_{uuid.uuid4().hex[:8]}"
    database = make_url(fresh_mariadb).database
    with server.begin() as conn:
        conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{SECRET}'"))
        conn.execute(text(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{SECRET}'"))
        for host in ("%", "localhost"):
            conn.execute(text(f"GRANT ALL ON `{database}`.* TO '{user}'@'{host}'"))
    try:
        url = make_url(fresh_mariadb).set(username=user, password=SECRET)
        yield url.render_as_string(hide_password=False)
    finally:
        server.dispose()
        with server.begin() as conn:
            for host in ("%", "localhost"):
                conn.execute(text(f"DROP USER IF EXISTS '{user}'@'{host}'"))
        server.dispose()


def test_schema_error_never_shows_password(
    user_with_password: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), Lims(user_with_password) as db:
        assert SECRET not in db.url and "***" in db.url
        assert SECRET not in repr(db) and SECRET not in db.schema.describe()
    _execute(user_with_password, "ALTER TABLE AutoProcProgram DROP COLUMN processingStatus")
    with caplog.at_level(logging.DEBUG), pytest.raises(SchemaError) as err:
        Lims(user_with_password)
    assert "AutoProcProgram.processingStatus" in str(err.value)
    assert SECRET not in str(err.value) and ":***@" in str(err.value)
    assert SECRET not in caplog.text
    assert "LIMS mysql+mysqlconnector://" in caplog.text  # the report was logged, masked


# ---------------------------------------------------------------- queries

FILES = {
    "s1": ("/dls/i18/data/2024/cm12345-1/i18-000001.nxs", "cm12345-1", "XRF map of Sample A"),
    "s2": ("/dls/i18/data/2024/cm12345-1/i18-000002.nxs", "cm12345-1", "Tomo of sample B 100%"),
    "s3": ("/dls/i18/data/2024/cm12345-2/i18-000003.nxs", "cm12345-2", "XRF map of sample C"),
    "s4": ("/dls/i18/data/2024/mx999-1/i18-000004.nxs", "mx999-1", "sample A again"),
}
TECHNIQUE = {"s1": "XRF map", "s2": "tomo", "s3": "XRF map", "s4": "XRF map"}
# job name -> (scan, recipe, step statuses, expected overall status)
JOBS = {
    "j1": ("s1", "xrf-map", [Status.SUCCESS, Status.SUCCESS], Status.SUCCESS),
    "j2": ("s1", "xrd-ct", [Status.RUNNING, Status.QUEUED], Status.RUNNING),
    "j3": ("s2", "xrd-ct", [Status.FAILED, Status.SUCCESS], Status.FAILED),
    "j4": ("s3", "xrf-map", [], Status.QUEUED),
    "j5": ("s4", "xrf-map", [Status.SKIPPED, Status.SKIPPED], Status.SKIPPED),
    "j6": ("s3", "xrf-map", [Status.QUEUED, Status.SUCCESS], Status.RUNNING),
    "j7": ("s2", "xrf-map", [Status.SKIPPED, Status.SUCCESS], Status.SUCCESS),
}


@pytest.fixture
def world(lims: Lims) -> dict[str, int]:
    """Four scans in three visits, seven jobs; job j<i> created on day i (2024-05-0<i>)."""
    ids: dict[str, int] = {}
    for name, (path, visit, title) in FILES.items():
        ids[name] = lims.record_scan(scan(path, visit, title), experiment_type=TECHNIQUE[name])
    for day, (name, (s, recipe, steps, _expected)) in enumerate(JOBS.items(), start=1):
        job = lims.create_job(ids[s], recipe, {"n": day})
        for i, status in enumerate(steps):
            program = lims.create_program(job, f"step{i}", "bench")
            if status is not Status.QUEUED:
                lims.set_status(program, status, at=T0)
        with lims._engine.begin() as conn:
            conn.execute(
                update(isp.ProcessingJob)
                .where(isp.ProcessingJob.processingJobId == job)
                .values(recordTimestamp=datetime(2024, 5, day, 12, 0, 0))
            )
        ids[name] = job
    return ids


def names(world: dict[str, int], listings: list[JobListing]) -> list[str]:
    by_id = {v: k for k, v in world.items() if k.startswith("j")}
    return [by_id[j.id] for j in listings]


def test_visit_jobs(lims: Lims, world: dict[str, int]) -> None:
    got = visit_jobs(lims, "cm12345-1")
    assert names(world, got) == ["j7", "j3", "j2", "j1"]  # newest first
    for job in got:
        assert job.status is JOBS[names(world, [job])[0]][3]
        assert job.status is lims.job(job.id).status  # the adapter's own rule agrees
        assert job.visit == "cm12345-1" and job.beamline == "i18"
    j1 = got[-1]
    assert j1.n_steps == 2 and j1.step_counts == {Status.SUCCESS: 2}
    assert j1.scan_file == Path(FILES["s1"][0])
    assert j1.experiment_type == "XRF map" and "Sample A" in j1.title
    assert j1.created == datetime(2024, 5, 1, 12, 0, 0)
    assert j1.updated == T0
    j2 = got[-2]
    assert j2.step_counts == {Status.RUNNING: 1, Status.QUEUED: 1}
    assert names(world, visit_jobs(lims, "cm12345-2")) == ["j6", "j4"]
    assert visit_jobs(lims, "cm12345-2")[-1].n_steps == 0
    assert names(world, visit_jobs(lims, "cm12345")) == ["j7", "j6", "j4", "j3", "j2", "j1"]
    assert visit_jobs(lims, "cm12345-9") == [] and visit_jobs(lims, "zz1-1") == []
    assert names(world, visit_jobs(lims, "cm12345", limit=2)) == ["j7", "j6"]
    with pytest.raises(LimsError, match="not like"):
        visit_jobs(lims, "no visit")


def test_lookups_by_data_collection_and_file(
    lims: Lims, world: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert names(world, jobs_for_data_collection(lims, world["s1"])) == ["j2", "j1"]
    assert names(world, jobs_for_data_collection(lims, world["s3"])) == ["j6", "j4"]
    assert jobs_for_data_collection(lims, 999999) == []
    for name, (path, _visit, _title) in FILES.items():
        assert data_collection_for_file(lims, path) == world[name]
        assert data_collection_for_file(lims, Path(path)) == world[name]
    assert data_collection_for_file(lims, "/dls/i18/data/2024/cm12345-1/nope.nxs") is None
    assert data_collection_for_file(lims, "/dls/i18/data/2024/cm12345-1/") is None
    local = lims.record_scan(scan(str(tmp_path / "local.nxs"), None, "local"))
    monkeypatch.chdir(tmp_path)
    assert data_collection_for_file(lims, "local.nxs") == local
    assert data_collection_for_file(lims, "./local.nxs") == local


def test_find_jobs_filters(lims: Lims, world: dict[str, int]) -> None:
    def find(**kw) -> list[str]:
        return names(world, find_jobs(lims, **kw))

    assert find() == ["j7", "j6", "j5", "j4", "j3", "j2", "j1"]
    assert find(limit=3) == ["j7", "j6", "j5"]
    assert find(limit=0) == []
    assert find(recipe="xrd-ct") == ["j3", "j2"]
    assert find(recipe="nope") == []
    assert find(technique="tomo") == ["j7", "j3"]
    assert find(technique="XRF map", visit="cm12345") == ["j6", "j4", "j2", "j1"]
    assert find(sample_or_title="sample a") == ["j5", "j2", "j1"]  # case-insensitive
    assert find(sample_or_title="100%") == ["j7", "j3"]  # % is a character, not a wildcard
    assert find(sample_or_title="_") == []
    assert find(sample_or_title="i18-000003") == ["j6", "j4"]  # the scan id
    assert find(since=datetime(2024, 5, 3)) == ["j7", "j6", "j5", "j4", "j3"]
    assert find(until=datetime(2024, 5, 3)) == ["j2", "j1"]
    assert find(since=datetime(2024, 5, 2), until=datetime(2024, 5, 4)) == ["j3", "j2"]
    assert find(status="failed") == ["j3"]
    assert find(status=Status.RUNNING) == ["j6", "j2"]
    assert find(status="queued") == ["j4"]
    assert find(status="skipped") == ["j5"]
    assert find(status=["success", Status.SKIPPED]) == ["j7", "j5", "j1"]
    assert find(status="running", visit="cm12345-1") == ["j2"]
    assert find(status=["success", "running"], limit=2) == ["j7", "j6"]
    assert find(status="success", recipe="xrf-map", sample_or_title="sample") == ["j7", "j1"]
    with pytest.raises(LimsError, match="not one of"):
        find_jobs(lims, status="done")
    # Both paths (page + counts, and counts joined in) give the same records.
    everything = find_jobs(lims)
    by_status = find_jobs(lims, status=list(Status))
    assert by_status == everything
    # An Engine works as well as the Lims.
    assert find_jobs(lims._engine, recipe="xrd-ct") == find_jobs(lims, recipe="xrd-ct")
    # The same jobs as the adapter's own job list.
    assert [j.summary() for j in everything] == lims.jobs()


def test_queries_cost_a_fixed_number_of_statements(lims: Lims, world: dict[str, int]) -> None:
    dc = world["s1"]
    for i in range(30):  # many more jobs, each with steps
        job = lims.create_job(dc, "xrf-map", {})
        for k in range(2):
            program = lims.create_program(job, f"s{k}", "x")
            lims.set_status(program, Status.RUNNING if i % 2 else Status.SUCCESS)
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(lims._engine, "before_cursor_execute", count)
    try:
        assert len(find_jobs(lims, limit=None)) == 37
        assert len(statements) == 2, statements
        statements.clear()
        assert len(find_jobs(lims, status="running", limit=None)) == 15 + 2
        assert len(statements) == 1, statements
        statements.clear()
        assert len(visit_jobs(lims, "cm12345-1")) == 34
        assert len(statements) == 2
    finally:
        event.remove(lims._engine, "before_cursor_execute", count)


# ---------------------------------------------------------------- benchmark


def test_lims_benchmark_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import benchmarks.__main__ as bench_main
    import benchmarks.lims as bench

    assert "lims" in bench_main.MODULES
    results = bench.run(duration=0.3, threads=2)
    names = [r.name for r in results]
    assert names[:2] == ["lims.status_updates_sqlite", "lims.status_updates_sqlite_vs_goal"]
    for r in results:
        if r.note.startswith("skipped"):
            assert "127.0.0.1:3306" in r.note or "MariaDB" in r.note
            continue
        assert r.value > 0 and r.baseline_value > 0, r
        assert "all found afterwards" in r.note or r.baseline == "goal"
