"""Cancelling a job while it runs, from another process: live frame steps, a wrapped program,
a job not started yet, and the refusals. The job runs on the real LocalCluster; the cancel
comes through the LIMS (an SQLite file both sides open), as from another host."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

from hpcproc.cancel import cancel_of, request_cancel
from hpcproc.dispatch.stop import Stop, stop_file
from hpcproc.errors import ConflictError
from hpcproc.jobs import execute_plan, job_notice, prepare, record_plan, run_job
from hpcproc.lims import Lims
from hpcproc.processes import stop_requested, wait
from hpcproc.recipes import load_recipe_text
from hpcproc.status import Status
from tests.launch_helpers import Background, start_writer, wait_for

LIVE = """
name: live-then-tool
steps:
  - id: windows
    uses: xrf_windows
    phase: live
    with: {elements: [Fe-Ka, Cu-Ka], mca: /entry/instrument/xspress3/data}
  - id: tool
    uses: command
    phase: downstream
    needs: [windows]
    with: {program: "true"}
"""

SLOW_TOOL = """
name: slow-tool
steps:
  - id: tool
    uses: command
    phase: downstream
    resources: {env: current}
    with:
      program: python
      args:
        - "-c"
        - "import os, time; open('pid', 'w').write(str(os.getpid()));
           print('started', flush=True); time.sleep(300)"
      timeout: 600
"""


CLI = [sys.executable, "-m", "hpcproc.cli"]


def _only_job(lims: Lims) -> int:
    return wait_for("the job to be recorded", lambda: [j.id for j in lims.jobs(5)], 60)[0]


def test_cancel_from_another_process_stops_a_live_job_and_keeps_its_points(
    tmp_path: Path, client, lims: Lims
) -> None:
    # 8 points/s over 20x24 points: a minute of scan, far longer than the test waits.
    writer, scan = start_writer(
        tmp_path / "data", "--map", "20x24", "--rate", "8", "--no-xrd", "--scan-number", "3"
    )
    try:
        recipe = load_recipe_text(LIVE, "live-then-tool.yaml")
        job = Background(lambda: run_job(recipe, scan, {}, lims=lims, client=client))
        job_id = _only_job(lims)
        processed = scan.parent / "processed"

        def progress() -> int:
            try:
                (f,) = processed.glob("*.nxs")
                with h5py.File(f, "r", swmr=True) as h:
                    return int(h["entry/windows/progress"][()])
            except (OSError, KeyError, ValueError):
                return 0

        wait_for("8 points processed", lambda: progress() >= 8, 60)
        # Another process, as a person on another host would: `hpcproc cancel`.
        env = {**os.environ, "HPCPROC_LIMS_URL": lims.url, "HPCPROC_HOME": str(tmp_path / "h")}
        cancel = subprocess.run(
            [*CLI, "cancel", str(job_id), "--by", "tester", "--reason", "wrong\nenergy"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cancel.returncode == 0, cancel.stderr
        assert f"job {job_id}: cancelled by tester at " in cancel.stdout
        assert f"job {job_id} stopped: failed" in cancel.stdout
        outcome = job.result(30)
        assert writer.poll() is None, "the scan was still being written"
    finally:
        writer.kill()
        writer.wait()
    assert outcome.steps == {"windows": Status.FAILED, "tool": Status.SKIPPED}
    record = lims.job(job_id)
    assert cancel_of(record).startswith("cancelled by tester at ")
    assert cancel_of(record).endswith(": wrong energy")
    steps = {s.step_id: s for s in record.steps}
    done = int(steps["windows"].message.split(" of ")[0])
    assert 8 <= done < 480
    assert steps["windows"].message.startswith(f"{done} of 480 points processed; cancelled by")
    assert steps["tool"].message.startswith("skipped: cancelled by tester")
    with h5py.File(outcome.processed, "r") as f:
        proc = f["entry/windows"]
        assert proc["status"][()] == b"failed"
        assert b"cancelled by tester" in proc["message"][()]
        assert int(proc["progress"][()]) == done
        fe = proc["maps/Fe-Ka"][()].reshape(480)
        kept = np.isfinite(fe)
        assert kept.sum() == done, "the points processed before the cancel are kept, no more"
        assert (fe[kept] > 0).all()
        assert f["entry/tool/status"][()] == b"skipped"
    assert not stop_file(outcome.processed).exists()


def test_cancelled_program_is_killed_and_its_logs_kept(client, lims: Lims, sim_scan) -> None:
    recipe = load_recipe_text(SLOW_TOOL, "slow-tool.yaml")
    job = Background(lambda: run_job(recipe, sim_scan.path, {}, lims=lims, client=client))
    job_id = _only_job(lims)
    workdir = wait_for(
        "the program to start",
        lambda: next(iter(sim_scan.path.parent.glob(f"processed/*job{job_id}-tool/pid")), None),
        60,
    )
    pid = int(wait_for("its pid", workdir.read_text, 10))
    assert psutil.pid_exists(pid)
    other = Lims(lims.url)  # another connection: as another process would
    try:
        text = request_cancel(other, job_id, "tester", "hung")
    finally:
        other.close()
    outcome = job.result(60)
    assert outcome.steps == {"tool": Status.FAILED} and outcome.cancelled == text
    notice = job_notice(lims, prepare(recipe, sim_scan.path, {}), job_id, outcome)
    assert notice.status == "cancelled" and notice.subject().endswith(f"job {job_id} cancelled")
    assert notice.steps["tool"] == ("failed", f"{text}; 'python' killed")
    (step,) = lims.job(job_id).steps
    assert step.message == f"{text}; 'python' killed"
    wait_for("the program to be gone", lambda: not _alive(pid), 10)
    logs = {a.path.name: a.path for a in step.attachments if a.file_type == "Log"}
    assert logs["stdout.log"].read_text() == "started\n"  # its output is kept
    assert set(logs) == {"stdout.log", "stderr.log"}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_job_cancelled_before_it_starts_runs_nothing(client, lims: Lims, sim_scan) -> None:
    plan = prepare(load_recipe_text(LIVE, "live-then-tool.yaml"), sim_scan.path, {})
    job = record_plan(plan, lims=lims)
    text = request_cancel(lims, job.job_id, "tester")
    assert text.startswith("cancelled by tester at ") and ": " not in text.split(" at ")[1][20:]
    outcome = execute_plan(plan, job, lims=lims, client=client)
    assert outcome.steps == {"windows": Status.SKIPPED, "tool": Status.SKIPPED}
    for step in lims.job(job.job_id).steps:
        assert step.message == f"skipped: {text}"


def test_what_cannot_be_cancelled_says_why(client, lims: Lims, sim_scan) -> None:
    plan = prepare(load_recipe_text(LIVE, "live-then-tool.yaml"), sim_scan.path, {})
    ended = execute_plan(plan, record_plan(plan, lims=lims), lims=lims, client=client)
    assert ended.status == Status.SUCCESS
    with pytest.raises(ConflictError, match=rf"job {ended.job_id} has ended \(success\)"):
        request_cancel(lims, ended.job_id, "tester")
    held = record_plan(plan, lims=lims, awaiting_approval=True)
    with pytest.raises(ConflictError, match="awaiting approval: reject it instead"):
        request_cancel(lims, held.job_id, "tester")
    queued = record_plan(plan, lims=lims)
    first = request_cancel(lims, queued.job_id, "alice")
    with pytest.raises(ConflictError, match=re.escape(f"job {queued.job_id} is {first}")):
        request_cancel(lims, queued.job_id, "bob")


def test_cli_cancel_of_a_job_no_process_runs(cli, sim_scan) -> None:
    """A job whose process is gone cannot stop itself: the CLI says so, and --force closes it."""
    from hpcproc import config
    from hpcproc.lims import default_lims_url

    db = Lims(default_lims_url(config.home()))
    try:
        plan = prepare(load_recipe_text(LIVE, "live-then-tool.yaml"), sim_scan.path, {})
        job_id = record_plan(plan, lims=db).job_id
        r = cli("cancel", str(job_id), "--wait", "0.5")
        assert r.exit_code == 1
        assert "no process has stopped it after 0.5 s" in r.output and "--force" in r.output
        r = cli("cancel", str(job_id), "--wait", "0", "--force")
        assert r.exit_code == 0, r.output
        assert "2 open steps marked" in r.output
        record = db.job(job_id)
        assert {s.status for s in record.steps} == {Status.SKIPPED}
        assert all("(no process answered)" in s.message for s in record.steps)
        r = cli("cancel", str(job_id))
        assert r.exit_code == 1 and f"job {job_id} is cancelled by" in r.output
        r = cli("status", str(job_id), "--json")
        assert json.loads(r.output)["status"] == "skipped"
        r = cli("status", "--json")  # the job list says which were cancelled
        assert [(j["id"], j["cancelled"]) for j in json.loads(r.output)] == [(job_id, True)]
        assert "(cancelled)" in cli("status").output
    finally:
        db.close()


def test_stop_file_is_written_whole_and_removed(tmp_path: Path) -> None:
    path = stop_file(tmp_path / "x-job1.nxs")
    path.write_text("left by an earlier run")
    stop = Stop(path)
    assert not path.exists() and stop.reason is None and stop_requested(path) is None
    assert stop.request("cancelled by a")
    assert not stop.request("cancelled by b")  # the first wins
    assert stop.reason == "cancelled by a" == stop_requested(path)
    stop.close()
    assert not path.exists()
    # A job stopped before it made its first file: the directory is made for the request.
    early = Stop(stop_file(tmp_path / "not-yet" / "x-job2.nxs"))
    assert early.request("cancelled by d") and stop_requested(early.path) == "cancelled by d"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path.write_text("cancelled by c")
        why = wait(proc, 30, path)
        assert why is not None and not why.timed_out and why.stop_reason == "cancelled by c"
        assert proc.poll() is None  # wait() never kills: its caller does
    finally:
        proc.kill()
        proc.wait()
