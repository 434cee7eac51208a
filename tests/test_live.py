"""Live processing: a detector-like writer, hpcproc and a viewer in three separate processes.

The writer (`python -m hpcproc.nexus.live_writer`) writes the scan in SWMR mode at a fixed rate;
`hpcproc run` follows it and writes the processed file in SWMR mode; this test process reads
the processed file while both run, as a person's viewer would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcproc import progress
from hpcproc.jobs import run_job
from hpcproc.recipes import load_recipe

RECIPE = """\
name: live-both
description: XRD integration and XRF windows of one scan, live
parameters:
  poni: {type: path, default: "{scan.dir}/{scan.stem}.poni"}
steps:
  - id: integrate
    uses: xrd_integrate
    with: {poni: "{poni}", npt: 300, method: histogram}
    resources: {idle_timeout: %(timeout)s}
  - id: windows
    uses: xrf_windows
    with: {elements: [Fe-Ka, Zn-Ka], window_width: 40}
    resources: {idle_timeout: %(timeout)s}
"""

MAP = (6, 8)
N = MAP[0] * MAP[1]


def _start_writer(out: Path, rate: float, shape: str = "6x8") -> tuple[subprocess.Popen, Path]:
    """The detector's file writer, in its own process; returns once the file is in SWMR mode."""
    args = ["--map", shape, "--frame", "128x128", "--rate", str(rate)]
    writer = subprocess.Popen(
        [sys.executable, "-m", "hpcproc.nexus.live_writer", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = writer.stdout.readline().strip()
    assert line, writer.stderr.read()
    return writer, Path(line)


def _start_hpcproc(tmp: Path, scan: Path, timeout: float) -> subprocess.Popen:
    recipe = tmp / "live-both.yaml"
    recipe.write_text(RECIPE % {"timeout": timeout})
    env = {**os.environ, "HPCPROC_HOME": str(tmp / "home")}
    env.pop("HPCPROC_LIMS_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "hpcproc.cli", "run", str(recipe), str(scan), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


VIEWER = """
import sys, time, json
import h5py, hdf5plugin, numpy as np
path, n, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            progress = int(f["entry/integrate/progress"][()])
            patterns = f["entry/integrate/integrated/I"][()].reshape(n, -1)
    except (OSError, KeyError):
        time.sleep(0.05)  # not created yet, or not yet in SWMR mode
        continue
    finite = np.isfinite(patterns).all(axis=1)
    partial_ok = bool((np.isfinite(patterns).any(axis=1) == finite).all())
    print(json.dumps([progress, int(finite.sum()), partial_ok]), flush=True)
    if progress >= n:
        break
    time.sleep(0.1)
"""


def _start_viewer(processed: Path, n: int, limit: float = 120) -> subprocess.Popen:
    """A person's viewer: another process reading the processed file (SWMR) while it grows."""
    return subprocess.Popen(
        [sys.executable, "-c", VIEWER, str(processed), str(n), str(limit)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_live_result_equals_offline_processing(tmp_path, client, lims):
    """Writer and viewer are separate processes; hpcproc runs here on a warm LocalCluster, as
    the launcher service would, so it follows the scan from its first points."""
    writer, scan = _start_writer(tmp_path / "data", rate=12, shape="10x12")
    recipe = tmp_path / "live-both.yaml"
    recipe.write_text(RECIPE % {"timeout": 30})
    processed = scan.parent / "processed" / f"{scan.stem}-live-both-job1.nxs"
    n = 120
    viewer = _start_viewer(processed, n)
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(run_job, load_recipe(recipe), scan, {}, lims=lims, client=client)
        seen = [json.loads(line) for line in viewer.stdout]
        outcome = job.result(timeout=120)
    assert writer.wait(60) == 0, writer.stderr.read()
    assert outcome.processed == processed
    assert outcome.steps == {"integrate": "success", "windows": "success"}
    # The viewer saw the map fill in: several partial states, each one consistent: every
    # point the progress counter promises is there, whole.
    assert len({p for p, _, _ in seen if 0 < p < n}) >= 2, seen
    assert all(ok and progress <= finite <= n for progress, finite, ok in seen), seen
    assert seen[-1][:2] == [n, n]

    # Offline processing of the closed file gives the same numbers.
    offline = run_job(load_recipe(recipe), scan, {}, lims=lims, client=client)
    with h5py.File(processed, "r") as live_f, h5py.File(offline.processed, "r") as off_f:
        for key in ("integrate/integrated/I", "windows/maps/Fe-Ka", "windows/maps/Zn-Ka"):
            live, off = live_f[f"entry/{key}"][()], off_f[f"entry/{key}"][()]
            assert np.isfinite(live).all()
            np.testing.assert_allclose(live, off, rtol=1e-5, err_msg=key)
        assert live_f["entry/integrate/status"][()].decode() == "success"
    # The LIMS kept the live status (the last one: all points written and processed).
    step = lims.job(outcome.job_id).steps[0]
    assert step.status == "success"
    last = progress.parse(step.message)
    assert last is not None and (last.done, last.written, last.total) == (n, n, n)


def test_writer_killed_mid_scan_fails_the_step_and_keeps_the_rest(tmp_path):
    # A long scan (60 s at this rate): hpcproc's own start-up is well inside it.
    writer, scan = _start_writer(tmp_path / "data", rate=8, shape="20x24")
    hpc = _start_hpcproc(tmp_path, scan, timeout=2)
    processed = scan.parent / "processed" / f"{scan.stem}-live-both-job1.nxs"
    deadline = time.monotonic() + 60
    progress = 0
    while progress < 8 and time.monotonic() < deadline:
        try:
            with h5py.File(processed, "r", swmr=True) as f:
                progress = int(f["entry/integrate/progress"][()])
        except (OSError, KeyError):
            pass
        time.sleep(0.1)
    assert progress >= 8, "the live job never got going"
    env = {**os.environ, "HPCPROC_HOME": str(tmp_path / "home")}
    follow = subprocess.Popen(
        [sys.executable, "-m", "hpcproc.cli", "status", "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    assert hpc.wait(60) == 1, hpc.stderr.read()
    outcome = json.loads(hpc.stdout.read())[0]
    assert outcome["steps"] == {"integrate": "failed", "windows": "failed"}
    with h5py.File(processed, "r") as f:
        proc = f["entry/integrate"]
        message = proc["message"][()].decode()
        assert "writer stopped" in message and "no end-of-scan marker" in message
        done = int(proc["progress"][()])
        assert 8 <= done < 480
        finite = np.isfinite(proc["integrated/I"][()].reshape(480, -1)).all(axis=1)
        assert finite.sum() == done  # everything processed before the writer died is there
        assert finite[:done].all()
    # `status --follow` showed the live job until it ended, then said how.
    assert follow.wait(30) == 0, follow.stderr.read()
    assert "job 1 live-both: failed" in follow.stdout.read()
    status = subprocess.run(
        [sys.executable, "-m", "hpcproc.cli", "status", "1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    steps = json.loads(status.stdout)["steps"]
    assert {s["status"] for s in steps} == {"failed"}
    assert all("writer stopped" in s["message"] for s in steps)


@pytest.mark.parametrize("rate", [20])
def test_follower_counts_only_complete_points(tmp_path, rate):
    from hpcproc.nexus.follow import ScanFollower

    writer, scan = _start_writer(tmp_path / "data", rate=rate)
    counts = []
    with ScanFollower(scan, N) as follower:
        while True:
            complete, finished = follower.poll()
            counts.append(complete)
            if finished:
                break
            time.sleep(0.02)
    assert writer.wait(30) == 0
    assert counts == sorted(counts) and counts[-1] == N
    assert len(set(counts)) > 5  # it saw the scan grow point by point
