"""Direct-chunk frame reader (hpcproc.nexus.frames.FrameReader)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time

import h5py
import hdf5plugin
import numpy as np
import pytest

from hpcproc.errors import ScanError
from hpcproc.formats import read_scan_info
from hpcproc.nexus.frames import FrameReader
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan

EXC = "/entry/instrument/excalibur/data"
XSP = "/entry/instrument/xspress3/data"


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    return simulate_scan(
        tmp_path_factory.mktemp("frames"),
        SimulationConfig(map_shape=(4, 5), frame_shape=(64, 48), bins=256),
    )


@pytest.mark.parametrize("name", [EXC, XSP, "/entry/excalibur/data"])
def test_direct_equals_filter_path(scan, name):
    with FrameReader(scan.path, name) as r, h5py.File(scan.path, "r") as f:
        d = f[name]
        assert r.direct is True
        assert r.n_frames == d.shape[0] == len(r) and r.frame_shape == d.shape[1:]
        assert r.dtype == d.dtype
        buf = np.empty(r.frame_shape, r.dtype)
        for i in range(r.n_frames):
            expected = d[i]
            np.testing.assert_array_equal(r.read(i), expected)
            out = r.read(i, out=buf)
            assert out is buf
            np.testing.assert_array_equal(buf, expected)
        np.testing.assert_array_equal(r.read(-1), d[-1])
    with FrameReader(scan.path, name, direct=False) as r2:
        assert r2.direct is False
        np.testing.assert_array_equal(r2.read(3), d_read(scan.path, name, 3))


def d_read(path, name, i):
    with h5py.File(path, "r") as f:
        return f[name][i]


def test_read_batch(scan):
    with FrameReader(scan.path, EXC) as r, h5py.File(scan.path, "r") as f:
        all_frames = f[EXC][...]
        b = r.read_batch([0, 5, 19, 2])
        assert b.shape == (4, 64, 48) and b.dtype == np.uint16
        np.testing.assert_array_equal(b, all_frames[[0, 5, 19, 2]])
        np.testing.assert_array_equal(r.read_batch(slice(3, 9)), all_frames[3:9])
        out = np.empty((3, 64, 48), np.uint16)
        assert r.read_batch(range(10, 13), out=out) is out
        np.testing.assert_array_equal(out, all_frames[10:13])
        assert r.read_batch([]).shape == (0, 64, 48)
        with pytest.raises(ValueError):
            r.read_batch([0, 1], out=np.empty((3, 64, 48), np.uint16))
        with pytest.raises(ValueError):
            r.read(0, out=np.empty((64, 48), np.uint32))
        with pytest.raises(IndexError):
            r.read(20)
        with pytest.raises(IndexError):
            r.read_batch([0, -21])


def test_iterate(scan):
    with FrameReader(scan.path, XSP) as r:
        frames = list(r)
    assert len(frames) == 20 and frames[0].shape == (8, 256)


def _write(path, make):
    with h5py.File(path, "w") as f:
        make(f)


def test_gzip_dataset_not_direct(tmp_path):
    data = np.random.default_rng(1).integers(0, 1000, (5, 16, 24), dtype=np.uint16)
    p = tmp_path / "gzip.h5"
    _write(p, lambda f: f.create_dataset("d", data=data, chunks=(1, 16, 24), compression="gzip"))
    with FrameReader(p, "d") as r:
        assert r.direct is False
        for i in range(5):
            np.testing.assert_array_equal(r.read(i), data[i])
        np.testing.assert_array_equal(r.read_batch(range(5)), data)


def test_multi_frame_chunks_and_other_layouts_not_direct(tmp_path):
    data = np.arange(6 * 8 * 8, dtype=np.int32).reshape(6, 8, 8)
    p = tmp_path / "layouts.h5"

    def make(f):
        f.create_dataset("two", data=data, chunks=(2, 8, 8), **hdf5plugin.Blosc())
        f.create_dataset("contig", data=data)
        f.create_dataset("raw_chunks", data=data, chunks=(1, 8, 8))
        f.create_dataset("lz4", data=data, chunks=(1, 8, 8), **hdf5plugin.LZ4())
        f.create_dataset("one_d", data=np.arange(5))

    _write(p, make)
    for name in ("two", "contig", "raw_chunks", "lz4"):
        with FrameReader(p, name) as r:
            assert r.direct is False, name
            np.testing.assert_array_equal(r.read_batch(range(6)), data)
    with pytest.raises(ScanError, match=">= 2 dimensions"):
        FrameReader(p, "one_d")
    with pytest.raises(ScanError, match="no dataset /missing"):
        FrameReader(p, "/missing")


def test_virtual_dataset_not_direct(scan, tmp_path):
    src = tmp_path / "src.nxs"
    shutil.copy(scan.path, src)
    layout = h5py.VirtualLayout(shape=(20, 64, 48), dtype=np.uint16)
    layout[:] = h5py.VirtualSource(src, EXC, shape=(20, 64, 48))
    p = tmp_path / "i18-000009.nxs"

    def make(f):
        f.create_group("entry").create_virtual_dataset("data", layout, fillvalue=0)

    _write(p, make)
    with FrameReader(p, "/entry/data") as r, h5py.File(src, "r") as f:
        assert r.direct is False
        for i in range(20):
            np.testing.assert_array_equal(r.read(i), f[EXC][i])
        np.testing.assert_array_equal(r.read_batch([4, 1]), f[EXC][[1, 4]][::-1])
    info = read_scan_info(p)
    assert info.datasets["/entry/data"].virtual is True and info.shape == (20,)


def test_corrupt_chunk_names_frame(scan, tmp_path):
    p = tmp_path / "corrupt.nxs"
    shutil.copy(scan.path, p)
    garbage = np.random.default_rng(2).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    with h5py.File(p, "a") as f:
        f[EXC].id.write_direct_chunk((7, 0, 0), garbage)
        f[XSP].id.write_direct_chunk((2, 0, 0), garbage[:10])
    with FrameReader(p, EXC) as r:
        assert r.direct
        r.read(6)
        with pytest.raises(ScanError, match=r"frame 7\b") as e:
            r.read(7)
        assert str(p) in str(e.value) and EXC in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(ScanError, match="frame 7"):
            r.read_batch(range(5, 10))
    with FrameReader(p, XSP) as r, pytest.raises(ScanError, match="frame 2"):
        r.read(2)
    with FrameReader(p, EXC, direct=False) as r, pytest.raises(ScanError, match="frame 7"):
        r.read(7)  # the filter path names the frame too


def test_errors_open(tmp_path, scan):
    with pytest.raises(ScanError, match="not found"):
        FrameReader(tmp_path / "missing.nxs", EXC)
    bad = tmp_path / "bad.nxs"
    bad.write_bytes(b"nope" * 100)
    with pytest.raises(ScanError, match="not a readable HDF5"):
        FrameReader(bad, EXC)
    with pytest.raises(ScanError, match="is a group"):
        FrameReader(scan.path, "/entry/instrument")
    r = FrameReader(scan.path, EXC)
    r.close()
    r.close()  # idempotent
    with pytest.raises(ScanError, match="closed"):
        r.refresh()


WRITER = textwrap.dedent(
    """
    import sys, time, pathlib
    import h5py, hdf5plugin, numpy as np, blosc
    path, go = sys.argv[1], pathlib.Path(sys.argv[2])
    f = h5py.File(path, "w", libver="latest")
    d = f.create_dataset("data", shape=(0, 32, 32), maxshape=(None, 32, 32), chunks=(1, 32, 32),
                         dtype="u2", **hdf5plugin.Blosc(cname="lz4", shuffle=2))
    f.swmr_mode = True
    def put(i):
        d.resize(i + 1, axis=0)
        frame = np.full((32, 32), i, np.uint16)
        d.id.write_direct_chunk((i, 0, 0), blosc.compress(frame.tobytes(), 2, cname="lz4",
                                                            shuffle=blosc.BITSHUFFLE))
        d.flush()
    for i in range(3):
        put(i)
    print("ready", flush=True)
    t = time.time()
    while not go.exists() and time.time() - t < 20:
        time.sleep(0.01)
    for i in range(3, 6):
        put(i)
    print("more", flush=True)
    t = time.time()
    while not (go.parent / "done").exists() and time.time() - t < 20:
        time.sleep(0.01)
    f.close()
    """
)


def test_refresh_follows_swmr_writer(tmp_path):
    path, go = tmp_path / "live.h5", tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(go)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        with FrameReader(path, "data") as r:
            assert r.swmr is True and r.direct is True
            assert r.n_frames == 3
            np.testing.assert_array_equal(r.read(2), np.full((32, 32), 2))
            go.touch()
            assert proc.stdout.readline().strip() == "more"
            t = time.time()
            while r.refresh() < 6 and time.time() - t < 10:
                time.sleep(0.01)
            assert r.n_frames == 6
            np.testing.assert_array_equal(r.read_batch(range(6))[:, 0, 0], np.arange(6))
        with pytest.raises(ScanError, match="no layout hpcproc knows"):  # opened (SWMR)
            read_scan_info(path)
    finally:
        (tmp_path / "done").touch()
        proc.wait(timeout=30)
