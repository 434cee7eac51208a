"""The scan-triggered launcher against the real RabbitMQ: no command typed, jobs recorded and run
live and downstream, feedback published, bad messages dead-lettered, nothing started twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter for reading the scans)
import pytest
from launch_helpers import (
    AMQP_URL,
    RECIPES,
    declare,
    delete,
    drain,
    gda,
    names,
    need_rabbitmq,
    port_open,
    publish,
    start_writer,
    wait_for,
)

from hpcproc.cancel import request_cancel
from hpcproc.launch.amqp import AmqpSource
from hpcproc.launch.launcher import Launcher
from hpcproc.launch.service import serve
from hpcproc.launch.source import REASON_HEADER
from hpcproc.launch.state import LauncherState
from hpcproc.lims import Lims
from hpcproc.lims.outbox import DurableLims
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan
from hpcproc.recipes.loader import list_recipes
from hpcproc.status import Status

EXPECTED = {"xrf-map", "xrf-live-then-summary"}  # the defaults for an i18 XRF-only scan


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished_jobs(url: str, n: int) -> list[Any] | None:
    """The LIMS's jobs once there are ``n`` with every step final, else None."""
    with Lims(url) as lims:
        jobs = [lims.job(j.id) for j in lims.jobs(limit=1000)]
    if len(jobs) >= n and all(s.status.final for j in jobs for s in j.steps):
        return jobs
    return None


# ---------------------------------------------------------------- the whole service, as deployed


def test_scan_messages_start_live_and_downstream_processing(tmp_path: Path) -> None:
    """`hpcproc launcher` as its own process; acquisition announces a scan before the detector
    writes it; the jobs are recorded, followed live, then the downstream step runs; feedback
    arrives; SIGTERM stops it cleanly."""
    need_rabbitmq()
    n = names()
    feedback_queue = n["queue"] + ".feedback"
    declare(n["queue"], n["exchange"])
    declare(feedback_queue, "hpcproc.feedback", "i18.#")
    home = tmp_path / "home"
    env = {**os.environ, "HPCPROC_HOME": str(home), "HPCPROC_RECIPE_PATH": str(RECIPES)}
    env.pop("HPCPROC_LIMS_URL", None)
    port = free_port()
    launcher = subprocess.Popen(
        [
            sys.executable, "-m", "hpcproc.cli", "launcher", "--amqp", AMQP_URL,
            "--queue", n["queue"], "--exchange", n["exchange"], "--dead-letter", n["dead_letter"],
            "--health-port", str(port), "--max-jobs", "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"sqlite:///{home / 'lims.sqlite'}"
    try:
        data = tmp_path / "data"
        scan = data / "i18-000007.nxs"
        # Announced first: the launcher waits for the file.
        publish(n["exchange"], "i18.scan", gda("i18-000007", "RUNNING", scan, percentComplete=0))
        wait_for("the launcher's health check", lambda: port_open(port), 60)
        writer, path = start_writer(
            data, "--map", "6x8", "--rate", "12", "--no-xrd", "--scan-number", "7"
        )
        assert path == scan
        assert writer.wait(60) == 0, writer.stderr.read() if writer.stderr else ""
        publish(n["exchange"], "i18.scan", gda("i18-000007", "FINISHED", scan, percentComplete=100))

        jobs = wait_for("both jobs to end", lambda: finished_jobs(url, 2), 180)
        assert {j.recipe for j in jobs} == EXPECTED
        for job in jobs:
            assert job.automatic and job.scan_file == scan
            assert job.status is Status.SUCCESS, [(s.step_id, s.message) for s in job.steps]
        chained = next(j for j in jobs if j.recipe == "xrf-live-then-summary")
        live, summary = (
            next(s for s in chained.steps if s.step_id == i) for i in ("fe_live", "summary")
        )
        assert summary.start >= live.end  # downstream ran after the live step had ended
        processed = next(a.path for a in summary.attachments)
        with h5py.File(processed, "r") as f:
            assert int(f["entry/fe_live/progress"][()]) == 48
            assert int(f["entry/summary/progress"][()]) == 48

        def health_says_done() -> dict[str, Any] | None:
            # The launcher files a job as done just after the LIMS has its final status.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                report = json.load(reply)
            assert reply.status == 200 and report["status"] == "ok"
            return report if report["jobs"] == {"done": 2} else None

        health = wait_for("the launcher to file both jobs as done", health_says_done, 30)
        assert all(health["sources"].values()) and health["jobs"] == {"done": 2}

        # The LIMS may show the jobs ended a moment before their feedback is published.
        messages: list[dict[str, Any]] = []

        def both_jobs_reported() -> bool:
            messages.extend(json.loads(body) for _h, body in drain(feedback_queue))
            ended = [m for m in messages if m["type"] == "job" and m["scan_file"] == str(scan)]
            return len(ended) >= 2

        wait_for("both jobs' feedback", both_jobs_reported, 30)
        mine = [m for m in messages if m.get("scan_file") == str(scan)]
        kinds = {m["type"] for m in mine}
        assert {"scan", "progress", "step", "job"} <= kinds
        done = [m for m in mine if m["type"] == "job"]
        assert sorted(m["recipe"] for m in done) == sorted(EXPECTED)
        assert all(m["status"] == "success" for m in done)
        last = max((m for m in mine if m["type"] == "progress" and m["step"] == "fe_live"),
                   key=lambda m: m["done"])  # fmt: skip
        assert last["done"] == last["total"] == 48
        assert drain(n["dead_letter"]) == []
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            code = launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            raise
        _out, err = launcher.communicate()
        delete(n["queue"], n["exchange"], n["dead_letter"], feedback_queue)
    assert code == 0, err[-3000:]


# ---------------------------------------------------------------- the launcher in this process


class Service:
    """A launcher serving an AMQP source in a thread of this test process."""

    def __init__(self, tmp: Path, client: Any, n: dict[str, str], **options: Any) -> None:
        self.url = f"sqlite:///{tmp / 'lims.sqlite'}"
        self.lims = DurableLims(self.url, tmp / "outbox.sqlite")
        self.state = LauncherState(tmp / "state.sqlite")
        self.source = AmqpSource(
            AMQP_URL, queue=n["queue"], exchange=n["exchange"], dead_letter=n["dead_letter"]
        )
        recipes = options.pop("recipes", None)
        self.launcher = Launcher(
            lims=self.lims,
            client=client,
            state=self.state,
            recipes=recipes or (lambda: list_recipes(errors=[])),
            file_wait=options.pop("file_wait", 20.0),
            **options,
        )
        self.stop = threading.Event()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=serve, args=(self.launcher, [self.source], self.stop), kwargs={"ready": ready}
        )
        self.thread.start()
        assert ready.wait(30)
        wait_for("the AMQP source to connect", lambda: self.source.connected, 30)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(120)
        self.lims.close()
        self.state.close()


@pytest.fixture
def service(tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    need_rabbitmq()
    monkeypatch.setenv("HPCPROC_RECIPE_PATH", str(RECIPES))
    n = names()
    services: list[Service] = []

    def make(**options: Any) -> Service:
        s = Service(tmp_path / f"launcher{len(services)}", client, n, **options)
        services.append(s)
        return s

    make.names = n  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for s in services:
            s.close()
        delete(n["queue"], n["exchange"], n["dead_letter"])


def xrf_scan(out: Path, number: int, shape: tuple[int, int] = (3, 4)) -> Path:
    cfg = SimulationConfig(map_shape=shape, xrd=False, scan_number=number, seed=number, bins=1024)
    return simulate_scan(out, cfg).path


def test_malformed_messages_are_dead_lettered_with_their_reason(
    service: Any, tmp_path: Path
) -> None:
    s = service()
    n = service.names
    scan = xrf_scan(tmp_path / "data", 3)
    bad = {
        b"this is not json": "not JSON",
        json.dumps({"hello": 1}).encode(): "neither a GDA scan status",
        json.dumps(gda("i18-1", "EXPLODED", scan)).encode(): "status 'EXPLODED' is not one of",
        json.dumps(gda("i18-2", "RUNNING", None)).encode(): "no scan file named",
        json.dumps(["start", {"uid": 7, "time": "noon"}]).encode(): "bluesky start document",
        json.dumps(gda("i18-3", "RUNNING", tmp_path / "never.nxs")).encode(): "never.nxs",
        json.dumps(gda("i18-4", "RUNNING", scan, processing=["no-such-recipe"])).encode():
            "no recipe named 'no-such-recipe'",
    }  # fmt: skip
    s.launcher.file_wait = 1.0
    for body in bad:
        publish(n["exchange"], "i18.scan", body)
    dead = wait_for("every bad message in the dead-letter queue", lambda: _collect(n, len(bad)))
    reasons = {body: headers[REASON_HEADER] for headers, body in dead}
    for body, expected in bad.items():
        assert expected in reasons[body], (body, reasons[body])
        assert "\n" not in reasons[body]
    assert s.source.last_error is None  # dead-lettering never cost the connection
    # The launcher is still up, and the good part of the last message was done.
    jobs = wait_for("the defaults of the last scan", lambda: finished_jobs(s.url, 2))
    assert {j.recipe for j in jobs} == EXPECTED


_collected: dict[str, list] = {}


def _collect(n: dict[str, str], count: int) -> list | None:
    got = _collected.setdefault(n["dead_letter"], [])
    got.extend(drain(n["dead_letter"]))
    return got if len(got) >= count else None


def test_repeated_and_redelivered_messages_start_nothing_twice(
    service: Any, tmp_path: Path
) -> None:
    s = service()
    n = service.names
    scan = xrf_scan(tmp_path / "data", 5)
    for status in ("RUNNING", "RUNNING", "PAUSED", "RUNNING", "FINISHED", "FINISHED"):
        publish(n["exchange"], "i18.scan", gda("i18-000005", status, scan))
    jobs = wait_for("the jobs", lambda: finished_jobs(s.url, 2))
    time.sleep(1.0)  # anything started twice would show by now
    jobs = finished_jobs(s.url, 2)
    assert jobs is not None and sorted(j.recipe for j in jobs) == sorted(EXPECTED)
    assert s.state.counts() == {"done": 2}

    # A message the launcher recorded but did not acknowledge (it died first) comes again:
    s.launcher.handle_message(json.dumps(gda("i18-000005", "RUNNING", scan)).encode(), {})
    assert s.launcher.running() == 0 and len(finished_jobs(s.url, 2) or []) == 2


def test_twenty_scans_announced_at_once_are_all_processed(service: Any, tmp_path: Path) -> None:
    s = service(max_jobs=4)
    n = service.names
    scans = [xrf_scan(tmp_path / "data", 100 + i, (2, 3)) for i in range(20)]
    for i, scan in enumerate(scans):
        publish(n["exchange"], "i18.scan", gda(f"i18-{100 + i:06d}", "RUNNING", scan))
    for i, scan in enumerate(scans):
        publish(n["exchange"], "i18.scan", gda(f"i18-{100 + i:06d}", "FINISHED", scan))
    jobs = wait_for("40 jobs", lambda: finished_jobs(s.url, 40), 300)
    assert len(jobs) == 40
    failed = [
        (j.recipe, s.step_id, s.message) for j in jobs for s in j.steps if s.status != "success"
    ]
    assert not failed, failed
    by_scan: dict[Path, list[str]] = {}
    for j in jobs:
        by_scan.setdefault(j.scan_file, []).append(j.recipe)
    assert set(by_scan) == set(scans)
    assert all(sorted(r) == sorted(EXPECTED) for r in by_scan.values())


def _restart_rabbitmq() -> None:
    """Stop the broker node and start it again with the command that starts it on this machine."""
    subprocess.run(["rabbitmqctl", "stop"], check=True, capture_output=True, timeout=120)
    wait_for("RabbitMQ to stop", lambda: not port_open(5672), 60)


def _start_rabbitmq() -> None:
    if not port_open(5672):
        subprocess.run(["rabbitmq-server", "-detached"], check=True, timeout=60)
    wait_for("RabbitMQ to start", lambda: port_open(5672), 120, 0.5)


def test_rabbitmq_restart_mid_scan_loses_no_scan_and_duplicates_no_job(
    service: Any, tmp_path: Path
) -> None:
    """The broker goes down while a live scan is processed and messages are being published:
    every scan is processed once, with every job exactly once."""
    s = service()
    n = service.names
    data = tmp_path / "data"
    scan_a = data / "i18-000011.nxs"
    scan_b = xrf_scan(data, 12)
    publish(n["exchange"], "i18.scan", gda("i18-000011", "RUNNING", scan_a))
    writer, path = start_writer(
        data, "--map", "6x8", "--rate", "4", "--no-xrd", "--scan-number", "11"
    )
    assert path == scan_a
    try:
        wait_for("scan A's jobs to run", lambda: s.state.counts().get("running") == 2, 60)
        _restart_rabbitmq()
        # Acquisition keeps announcing while the broker is down (its publisher retries).
        announcer = threading.Thread(
            target=lambda: [
                publish(n["exchange"], "i18.scan", gda("i18-000012", "RUNNING", scan_b)),
                publish(n["exchange"], "i18.scan", gda("i18-000012", "FINISHED", scan_b)),
            ]
        )
        announcer.start()
        time.sleep(1.0)
    finally:
        _start_rabbitmq()
    announcer.join(120)
    assert writer.wait(60) == 0
    publish(n["exchange"], "i18.scan", gda("i18-000011", "FINISHED", scan_a))
    wait_for("the source to reconnect", lambda: s.source.connected, 60)
    jobs = wait_for("4 jobs", lambda: finished_jobs(s.url, 4), 180)
    time.sleep(1.0)
    jobs = finished_jobs(s.url, 4)
    assert jobs is not None and len(jobs) == 4
    assert sorted((j.scan_file.name, j.recipe) for j in jobs) == sorted(
        (p.name, r) for p in (scan_a, scan_b) for r in EXPECTED
    )
    assert all(j.status is Status.SUCCESS for j in jobs), [
        (j.recipe, [(st.step_id, st.message) for st in j.steps]) for j in jobs
    ]
    assert s.state.counts() == {"done": 4}


def _bluesky_documents(scan: Path) -> list[list[Any]]:
    """The same scan as bluesky would announce it: start, descriptor, resource, events, stop."""
    import event_model

    run = event_model.compose_run(
        metadata={
            "scan_id": 21,
            "beamline_id": "i18",
            "data_session": "cm12345-1",
            "plan_name": "grid_scan",
            "shape": [3, 4],
            "num_points": 12,
        }
    )
    descriptor = run.compose_descriptor(
        name="primary",
        data_keys={"mca": {"source": "xspress3", "dtype": "array", "shape": [8, 1024],
                           "external": "STREAM:"}},
    )  # fmt: skip
    resource = run.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=f"file://localhost{scan}",
        data_key="mca",
        parameters={"dataset": "/entry/instrument/xspress3/data"},
    )
    docs = [["start", run.start_doc], ["descriptor", descriptor.descriptor_doc]]
    docs.append(["stream_resource", resource.stream_resource_doc])
    for i in range(1, 13, 4):
        event = descriptor.compose_event(data={}, timestamps={}, seq_num=i)
        docs.append(["event", event])
    docs.append(["stop", run.compose_stop()])
    return json.loads(json.dumps(docs))  # as they arrive: JSON


def _jobs_summary(url: str) -> list[tuple[Any, ...]]:
    jobs = wait_for("the jobs", lambda: finished_jobs(url, 2))
    return sorted(
        (
            j.recipe,
            j.scan_file,
            j.automatic,
            json.dumps(j.parameters, sort_keys=True),
            tuple((st.step_id, st.uses, st.status) for st in j.steps),
        )
        for j in jobs
    )


def test_bluesky_and_gda_announcements_give_the_same_jobs(
    service: Any, tmp_path: Path, client: Any
) -> None:
    scan = xrf_scan(tmp_path / "data", 21)
    via_bluesky = service()
    for doc in _bluesky_documents(scan):
        publish(service.names["exchange"], "i18.bluesky", doc)
    bluesky_jobs = _jobs_summary(via_bluesky.url)

    via_gda = service()  # a second launcher on its own LIMS, fed GDA messages directly
    via_gda.source.connected  # noqa: B018 (it consumes the same queue, which is empty by now)
    for status in ("RUNNING", "FINISHED"):
        body = json.dumps(gda("i18-000021", status, scan, scanCommand="grid_scan")).encode()
        via_gda.launcher.handle_message(body, {})
    gda_jobs = _jobs_summary(via_gda.url)
    assert bluesky_jobs == gda_jobs
    assert {j[0] for j in gda_jobs} == EXPECTED


def test_restarted_launcher_runs_again_what_was_left_unfinished(
    tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import Future

    monkeypatch.setenv("HPCPROC_RECIPE_PATH", str(RECIPES))
    scan = xrf_scan(tmp_path / "data", 31)
    url = f"sqlite:///{tmp_path / 'lims.sqlite'}"
    body = json.dumps(gda("i18-000031", "RUNNING", scan)).encode()

    def recipes() -> list[Any]:
        return list_recipes(errors=[])

    with Lims(url) as lims:
        first = Launcher(lims=lims, client=client, state=LauncherState(tmp_path / "s.sqlite"),
                         recipes=recipes)  # fmt: skip
        never: Future[Any] = Future()
        monkeypatch.setattr(first._pool, "submit", lambda *a, **k: never)  # dies before running
        first.handle_message(body, {})
        old = {r.job_id for r in first.state.jobs()}
        first.state.update_job(scan, "xrf-map", "running")
        first.state.close()
        # Someone cancels one of the jobs while no launcher runs: it is not run again.
        cancelled, left = sorted(old)
        text = request_cancel(lims, cancelled, "tester", "not this one")

        second = Launcher(lims=lims, client=client, state=LauncherState(tmp_path / "s.sqlite"),
                          recipes=recipes)  # fmt: skip
        new = second.resume()
        assert len(new) == 1 and not set(new) & old
        assert second.wait(120)
        second.handle_message(body, {})  # the redelivered message starts nothing
        assert second.running() == 0
        assert second.state.counts() == {"done": 1, "failed": 1}
        record = lims.job(left)
        assert all(st.status is Status.FAILED for st in record.steps)
        assert "launcher stopped" in record.steps[0].message
        record = lims.job(cancelled)
        assert all(st.status.final for st in record.steps)
        assert all(st.message == f"{text} (no process answered)" for st in record.steps)
        for job_id in new:
            assert lims.job(job_id).status is Status.SUCCESS
        second.state.close()


def test_watched_directory_needs_no_broker(
    tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded default: a scan file appearing in the watched directory is processed."""
    from hpcproc.launch.file_watch import FileWatch

    monkeypatch.setenv("HPCPROC_RECIPE_PATH", str(RECIPES))
    url = f"sqlite:///{tmp_path / 'lims.sqlite'}"
    data = tmp_path / "data"
    data.mkdir()
    with Lims(url) as lims:
        state = LauncherState(tmp_path / "state.sqlite")
        launcher = Launcher(lims=lims, client=client, state=state)
        watch = FileWatch(data, interval=0.2)
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(launcher, [watch], stop))
        thread.start()
        try:
            written = xrf_scan(tmp_path / "elsewhere", 41)  # finished files arrive whole
            scan = written.rename(data / written.name)
            jobs = wait_for("the jobs", lambda: finished_jobs(url, 2))
        finally:
            stop.set()
            thread.join(120)
            state.close()
    assert {j.recipe for j in jobs} == EXPECTED and {j.scan_file for j in jobs} == {scan}
    assert all(j.status is Status.SUCCESS for j in jobs)


def test_a_b18_xafs_scan_gets_the_xafs_recipe_by_default(tmp_path: Path, client: Any) -> None:
    """Default recipes follow the beamline and the NeXus structure: b18 + an XAFS energy scan
    -> xafs-b18 (and not the i18 map recipes)."""
    from hpcproc.nexus.xafs_sim import XafsConfig, simulate_xafs

    scan = simulate_xafs(tmp_path / "data", XafsConfig()).path
    url = f"sqlite:///{tmp_path / 'lims.sqlite'}"
    with Lims(url) as lims:
        state = LauncherState(tmp_path / "state.sqlite")
        launcher = Launcher(lims=lims, client=client, state=state)
        message = gda("b18-000001", "FINISHED", scan, beamline="b18")
        [job_id] = launcher.handle_event(launcher.parser.parse(json.dumps(message))[0])
        assert launcher.wait(120)
        job = lims.job(job_id)
        state.close()
    assert job.recipe == "xafs-b18" and job.automatic
    assert job.status is Status.SUCCESS, [(s.step_id, s.message) for s in job.steps]
    assert any(m.message.startswith("e0 = ") for s in job.steps for m in s.messages)


class _Heard:
    """Feedback and notifier in one: keeps what it is told."""

    def __init__(self) -> None:
        self.feedback: list[tuple[str, dict[str, Any]]] = []
        self.notices: list[Any] = []

    def publish(self, kind: str, message: dict[str, Any]) -> None:
        self.feedback.append((kind, message))

    def close(self) -> None:
        pass

    def send(self, notice: Any) -> None:
        self.notices.append(notice)


def test_a_recipe_that_needs_approval_waits_for_staff(tmp_path: Path, client: Any) -> None:
    """A scan triggers a recipe marked ``needs_approval``: the job is recorded, steps queued,
    and held (not run, not resumed, not started twice) until staff approve it; it then runs
    under the same job id."""
    from hpcproc.approval import approval_of, approve
    from hpcproc.jobs import execute_plan
    from hpcproc.notify import Notifiers
    from hpcproc.recipes import find_recipe

    held = find_recipe("xrf-map").model_copy(update={"needs_approval": True})
    scan = xrf_scan(tmp_path / "data", 51)
    body = json.dumps(gda("i18-000051", "FINISHED", scan)).encode()
    heard = _Heard()
    with Lims(f"sqlite:///{tmp_path / 'lims.sqlite'}") as lims:
        state = LauncherState(tmp_path / "state.sqlite")
        launcher = Launcher(lims=lims, client=client, state=state, recipes=lambda: [held],
                            feedback=heard, notifiers=Notifiers([heard]))  # fmt: skip
        try:
            launcher.handle_message(body, {})
            [row] = state.jobs()
            assert row.state == "awaiting approval" and launcher.running() == 0
            job_id = row.job_id
            time.sleep(1.0)
            record = lims.job(job_id)
            assert record.automatic and approval_of(record).awaiting
            assert [s.status for s in record.steps] == [Status.QUEUED]
            assert launcher.resume() == [] and launcher.running() == 0
            launcher.handle_message(body, {})  # redelivered: nothing new
            assert len(state.jobs()) == 1 and len(lims.jobs()) == 1
            [said] = [m for kind, m in heard.feedback if kind == "job"]
            assert said["status"] == "awaiting approval"
            assert said["job_id"] == job_id and said["recipe"] == "xrf-map"
            [notice] = heard.notices
            assert notice.status == "awaiting approval" and notice.job_id == job_id
            assert "awaiting approval" in notice.subject()

            plan, job = approve(lims, job_id, "admin", held)
            assert job.job_id == job_id and job.programs == {"windows": record.steps[0].id}
            outcome = execute_plan(plan, job, lims=lims, client=client)
        finally:
            state.close()
        record = lims.job(job_id)
    assert outcome.status is Status.SUCCESS and record.status is Status.SUCCESS
    assert approval_of(record).text.startswith("approved by admin at ")
    assert len(record.steps) == 1  # the recorded steps ran: none added


def test_a_cancelled_job_says_so_in_its_feedback(tmp_path: Path, client: Any) -> None:
    """Cancelled mid-scan: the job's feedback (and notification) says cancelled, by whom and
    why, so acquisition can tell it from a failure; the launcher's state says failed."""
    from hpcproc.cancel import request_cancel
    from hpcproc.recipes import find_recipe

    heard: list[tuple[str, dict[str, Any]]] = []

    class Heard:
        def publish(self, kind: str, message: dict[str, Any]) -> None:
            heard.append((kind, message))

        def close(self) -> None:
            pass

    def ended() -> list[dict[str, Any]]:
        return [m for kind, m in heard if kind == "job" and m.get("status") != "running"]

    writer, scan = start_writer(
        tmp_path / "data", "--map", "20x24", "--rate", "8", "--no-xrd", "--scan-number", "41"
    )
    try:
        with Lims(f"sqlite:///{tmp_path / 'lims.sqlite'}") as lims:
            state = LauncherState(tmp_path / "s.sqlite")
            recipes = [find_recipe("xrf-map")]
            launcher = Launcher(
                lims=lims, client=client, state=state, recipes=lambda: recipes, feedback=Heard()
            )
            launcher.handle_message(json.dumps(gda("i18-000041", "RUNNING", scan)).encode(), {})
            wait_for("points processed", lambda: any(k == "progress" for k, _ in heard), 60)
            (job,) = lims.jobs()
            text = request_cancel(lims, job.id, "beamline", "wrong sample")
            (done,) = wait_for("the job's end", ended, 60)
            assert done["status"] == "failed" and done["cancelled"] == text
            assert done["job_id"] == job.id and done["steps"] == {"windows": "failed"}
            assert writer.poll() is None  # the scan goes on: only the processing stopped
            assert launcher.shutdown(10)
            assert launcher.state.counts() == {"failed": 1}
            launcher.state.close()
    finally:
        writer.kill()
        writer.wait()
