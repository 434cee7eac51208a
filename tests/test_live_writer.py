"""Live SWMR scan writer (hpcproc.nexus.live_writer), followed from another process."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter for plain h5py reads)
import numpy as np
import pytest

from hpcproc.formats import read_scan_info
from hpcproc.nexus.live_writer import LiveConfig, LiveScanWriter, main, write_live_scan
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan

EXC = "/entry/instrument/excalibur/data"
XSP = "/entry/instrument/xspress3/data"
KEYS = "/entry/diamond_scan/keys/uniqueKeys"
FTIME = "/entry/diamond_scan/keys/frame_time"
FIN = "/entry/diamond_scan/scan_finished"
SMALL = dict(map_shape=(4, 5), frame_shape=(64, 64), bins=256)
N = 20
RATE = 20.0
CLI_SMALL = ["--map", "4x5", "--frame", "64x64", "--bins", "256"]


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> dict[str, np.ndarray]:
    s = simulate_scan(tmp_path_factory.mktemp("offline"), SimulationConfig(**SMALL))
    with h5py.File(s.path, "r") as f:
        return {EXC: f[EXC][...], XSP: f[XSP][...]}


def _start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpcproc.nexus.live_writer", str(out), *CLI_SMALL, "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _announced(proc: subprocess.Popen, timeout: float = 60.0) -> Path:
    """The scan path the writer prints on its first stdout line once the file is SWMR."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        pytest.fail(f"writer announced nothing within {timeout} s")
    line = proc.stdout.readline().strip()
    if not line:
        proc.wait(10)
        pytest.fail(f"writer exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return Path(line)


@pytest.fixture(scope="module")
def followed(tmp_path_factory):
    """Run the writer in a subprocess (20 points at 20 Hz) and follow it with a SWMR reader."""
    out = tmp_path_factory.mktemp("live")
    proc = _start(out, "--rate", str(RATE))
    try:
        path = _announced(proc)
        sizes: list[int] = []  # published points (non-zero keys) seen at each poll
        checked: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # point -> frame, spectrum
        with h5py.File(path, "r", swmr=True) as f:
            keys, exc, xsp, fin = f[KEYS], f[EXC], f[XSP], f[FIN]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                # keys first, then the detectors: a key on disk means its point's chunks are
                # (the writer flushes them before writing the key), not the other way round
                fin.refresh()
                keys.refresh()
                k = keys[()]
                done = int(np.count_nonzero(k))
                sizes.append(done)
                exc.refresh()
                xsp.refresh()
                for i in np.flatnonzero(k):
                    if int(i) not in checked:
                        # a key is written last: the point's chunks must be there and decode
                        assert exc.shape[0] > i and xsp.shape[0] > i
                        checked[int(i)] = (exc[int(i)], xsp[int(i)])
                if int(fin[()]) == 1:
                    break
                time.sleep(0.01)
        rc = proc.wait(30)
        stdout_rest = proc.stdout.read()
        assert rc == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stats = json.loads(stdout_rest.strip().splitlines()[-1])
    return {"path": path, "sizes": sizes, "checked": checked, "stats": stats}


def test_reader_sees_scan_grow(followed, offline):
    sizes = followed["sizes"]
    intermediate = {s for s in sizes if 0 < s < N}
    assert len(intermediate) >= 2, sizes
    assert sizes == sorted(sizes)  # published points never go away
    checked = followed["checked"]
    assert sorted(checked) == list(range(N))
    for i, (frame, spectrum) in checked.items():  # read during the scan, equal to offline
        np.testing.assert_array_equal(frame, offline[EXC][i])
        np.testing.assert_array_equal(spectrum, offline[XSP][i])


def test_finished_file_equals_offline(followed, offline):
    with h5py.File(followed["path"], "r") as f:
        assert int(f[FIN][()]) == 1
        np.testing.assert_array_equal(f[KEYS][()], np.arange(1, N + 1))
        for name in (EXC, XSP):
            d = f[name]
            assert d.shape == offline[name].shape and d.chunks == (1, *d.shape[1:])
            assert d.maxshape[0] is None and "32001" in d._filters
            np.testing.assert_array_equal(d[...], offline[name])
        np.testing.assert_array_equal(f["/entry/excalibur/data"][...], offline[EXC])
    info = read_scan_info(followed["path"])
    assert info.finished and info.shape == (4, 5) and info.axes == ("y", "x")
    assert info.end_time is not None and info.end_time > info.start_time
    assert info.axis_values["x"] == pytest.approx((0, 0.1, 0.2, 0.3, 0.4))
    st = followed["stats"]
    assert st["points"] == N and st["finished"] and st["rate_met"]


def test_frame_time_spans_the_scan(followed):
    with h5py.File(followed["path"], "r") as f:
        t = f[FTIME][()]
    assert t.shape == (N,) and np.all(np.diff(t) >= 0)
    assert abs(t[0] - time.time()) < 600  # unix time
    span = t[-1] - t[0]  # first to last publication: (N - 1) / rate when paced
    assert (N - 1) / RATE * 0.8 < span < (N - 1) / RATE + 1.0, span


def test_stop_after_leaves_a_dead_writers_file(tmp_path, offline):
    s = write_live_scan(tmp_path, SimulationConfig(**SMALL), LiveConfig(rate_hz=500, stop_after=7))
    assert s.poni.exists() and s.truth.exists()
    with h5py.File(s.path, "r") as f:
        assert int(f[FIN][()]) == 0
        assert f[EXC].shape[0] == f[XSP].shape[0] == 7
        np.testing.assert_array_equal(f[KEYS][()], np.arange(1, 8))
        np.testing.assert_array_equal(f[EXC][...], offline[EXC][:7])
        np.testing.assert_array_equal(f[XSP][...], offline[XSP][:7])
        assert f["/entry/end_time"][()] == b""
    info = read_scan_info(s.path)
    assert info.finished is False and info.end_time is None
    assert info.shape == (4, 5) and info.n_points == N  # the plan, not what was written
    assert info.datasets[EXC].shape == (7, 64, 64)


def test_pool_cycles_and_flush_every(tmp_path, offline):
    w = LiveScanWriter(tmp_path, SimulationConfig(**SMALL), LiveConfig(0, flush_every=6, pool=3))
    calls: list[tuple[int, int]] = []
    w.run(progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, N) for i in range(1, N + 1)]
    assert w.stats.precomputed == 3 and w.stats.flushes == 4  # 6, 12, 18, 20
    with h5py.File(w.path, "r") as f:
        assert int(f[FIN][()]) == 1
        np.testing.assert_array_equal(f[KEYS][()], np.arange(1, N + 1))
        t = f[FTIME][()]
        assert len(np.unique(t)) <= 4 and np.all(np.diff(t) >= 0)
        exc = f[EXC][...]
    for i in range(N):
        np.testing.assert_array_equal(exc[i], offline[EXC][i % 3])


def test_xrf_only_and_unmet_rate_warns_once(tmp_path, caplog):
    cfg = SimulationConfig(map_shape=(10, 30), xrd=False, bins=256, channels=4)
    with caplog.at_level(logging.WARNING, logger="hpcproc.nexus.live_writer"):
        w = LiveScanWriter(tmp_path, cfg, LiveConfig(rate_hz=1e7))
        s = w.run()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "points/s achieved" in warnings[0].getMessage()
    assert not w.stats.rate_met and w.stats.points == 300
    assert s.poni is None
    with h5py.File(s.path, "r") as f:
        assert "excalibur" not in f["/entry/instrument"]
        assert f[XSP].shape == (300, 4, 256) and int(f[FIN][()]) == 1


def test_killed_writer_is_readable(tmp_path, offline):
    proc = _start(tmp_path, "--rate", "20")
    try:
        path = _announced(proc)
        with h5py.File(path, "r", swmr=True) as f:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                f[KEYS].refresh()
                if np.count_nonzero(f[KEYS][()]) >= 5:
                    break
                time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    info = read_scan_info(path)  # a file still flagged "open for SWMR write"
    assert info.finished is False and info.shape == (4, 5)
    with h5py.File(path, "r", swmr=True) as f:
        k = f[KEYS][()]
        done = np.flatnonzero(k)
        assert 5 <= len(done) < N and int(f[FIN][()]) == 0
        for i in done:
            np.testing.assert_array_equal(f[EXC][i], offline[EXC][i])


def test_key_implies_chunk_at_full_speed(tmp_path):
    """Unpaced (~2-3 kHz): every point with a key has its chunk, for a follower that reads the
    keys first and refreshes the detector afterwards (one flush per publication failed this)."""
    args = ["--no-xrd", "--map", "30x60", "--bins", "512", "--channels", "4", "--rate", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcproc.nexus.live_writer", str(tmp_path), "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        path = _announced(proc)
        seen = 0
        with h5py.File(path, "r", swmr=True) as f:
            keys, xsp, fin = f[KEYS], f[XSP], f[FIN]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                fin.refresh()
                done = int(fin[()]) == 1
                keys.refresh()
                n = int(np.count_nonzero(keys[()]))
                if n > seen:
                    xsp.refresh()
                    for i in range(seen, n):
                        mask, chunk = xsp.id.read_direct_chunk((i, 0, 0))
                        assert mask == 0 and len(chunk) > 16
                    seen = n
                if done and seen == 1800:
                    break
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen == 1800


def test_config_errors(tmp_path, capsys):
    for bad in (dict(rate_hz=-1), dict(flush_every=0), dict(pool=0), dict(stop_after=-1)):
        with pytest.raises(ValueError):
            LiveConfig(**bad)
    assert main([str(tmp_path), "--rate", "-5"]) == 2
    assert "rate_hz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--map", "12by16"])
