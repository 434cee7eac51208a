"""Scan simulator (hpcproc.nexus.simulator) and scan metadata reader (read_scan_info)."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter for plain h5py reads)
import numpy as np
import pytest

from hpcproc.errors import ScanError
from hpcproc.formats import read_scan_info
from hpcproc.nexus.simulator import SimulatedScan, SimulationConfig, simulate_scan
from hpcproc.scaninfo import ScanInfo

EXC = "/entry/instrument/excalibur/data"
XSP = "/entry/instrument/xspress3/data"
SMALL = dict(map_shape=(4, 5), frame_shape=(64, 64), bins=512)


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> SimulatedScan:
    calls: list[tuple[int, int]] = []
    s = simulate_scan(
        tmp_path_factory.mktemp("sim"),
        SimulationConfig(**SMALL),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1] == (20, 20) and len(calls) == 20
    return s


@pytest.fixture(scope="module")
def truth(scan) -> dict:
    return json.loads(scan.truth.read_text())


def test_files_written(scan):
    assert scan.path.name == "i18-000001.nxs"
    assert scan.poni == scan.path.with_suffix(".poni") and scan.poni.exists()
    assert scan.truth.name == "i18-000001.truth.json" and scan.truth.exists()


def test_plain_h5py_reads_exact_frames(scan):
    """Normal filter-pipeline slicing returns exactly the chunks that were written."""
    import blosc2

    with h5py.File(scan.path, "r") as f:
        for name in (EXC, XSP):
            d = f[name]
            assert d.chunks == (1, *d.shape[1:])
            assert "32001" in d._filters
            every = d[...]
            for i in range(d.shape[0]):
                mask, chunk = d.id.read_direct_chunk((i, 0, 0))
                assert mask == 0
                decoded = np.frombuffer(blosc2.decompress(chunk), d.dtype).reshape(d.shape[1:])
                np.testing.assert_array_equal(every[i], decoded)
                np.testing.assert_array_equal(d[i], decoded)
        assert f[EXC].dtype == np.uint16 and f[EXC].shape == (20, 64, 64)
        assert f[XSP].dtype == np.uint32 and f[XSP].shape == (20, 8, 512)
        assert f[EXC][...].max() > 100  # rings present


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def test_nexus_structure(scan):
    with h5py.File(scan.path, "r") as f:
        assert _s(f.attrs["NX_class"]) == "NXroot" and _s(f.attrs["default"]) == "entry"
        for a in ("creator", "file_name", "file_time"):
            assert a in f.attrs
        e = f["entry"]
        assert _s(e.attrs["NX_class"]) == "NXentry" and _s(e.attrs["default"]) == "excalibur"
        for field in ("title", "scan_command", "start_time", "end_time", "program_name"):
            assert _s(e[field][()])
        assert _s(e["experiment_identifier"][()]) == "cm12345-1"
        assert _s(e["entry_identifier"][()]) == "1"
        assert _s(e["scan_command"][()]).startswith("mapscan y 0 0.3 0.1 x 0 0.4 0.1")
        inst = e["instrument"]
        assert _s(inst["name"][()]) == "i18"
        assert _s(inst["beam/incident_energy"].attrs["units"]) == "keV"
        assert inst["beam/incident_energy"][()] == 17.0
        assert _s(inst["beam/incident_wavelength"].attrs["units"]) == "angstrom"
        for det in ("excalibur", "xspress3"):
            assert _s(inst[det].attrs["NX_class"]) == "NXdetector"
            assert _s(e[det].attrs["NX_class"]) == "NXdata"
            assert _s(e[det].attrs["signal"]) == "data"
            assert e[f"{det}/data"] == inst[f"{det}/data"]  # hard link, same object
        for fld in ("x_pixel_size", "y_pixel_size", "distance"):
            assert _s(inst["excalibur"][fld].attrs["units"]) == "m"
        assert inst["xspress3/energy_gain"].shape == (8,)
        assert inst["xspress3/energy_offset"].shape == (8,)
        assert _s(e["sample"].attrs["NX_class"]) == "NXsample"
        np.testing.assert_allclose(e["sample/y"][:6], [0, 0, 0, 0, 0, 0.1])
        np.testing.assert_allclose(e["sample/x"][:6], [0, 0.1, 0.2, 0.3, 0.4, 0])
        assert _s(e["sample/x"].attrs["units"]) == "mm"
        ds = e["diamond_scan"]
        assert _s(ds.attrs["NX_class"]) == "NXcollection"
        assert list(ds["scan_shape"][()]) == [4, 5]
        assert [_s(v) for v in ds["scan_axes"][()]] == ["y", "x"]
        assert ds["scan_finished"][()] == 1
        np.testing.assert_array_equal(ds["keys/uniqueKeys"][()], np.arange(1, 21))


def test_poni_loads_and_matches_truth(scan, truth):
    import pyFAI

    ai = pyFAI.load(str(scan.poni))
    g = truth["geometry"]
    assert ai.dist == pytest.approx(0.15)
    assert ai.poni1 == pytest.approx(g["poni1_m"]) and ai.poni2 == pytest.approx(g["poni2_m"])
    assert ai.wavelength == pytest.approx(truth["wavelength_m"])
    assert ai.detector.pixel1 * 64 == pytest.approx(2069 * 55e-6)  # physical size kept
    assert ai.detector.pixel2 * 64 == pytest.approx(1796 * 55e-6)
    assert tuple(ai.detector.max_shape) == (64, 64)
    assert truth["wavelength_A"] == pytest.approx(12.398419843320026 / 17.0)
    assert truth["energy_keV"] == 17.0 and truth["flip_ud"] is False and truth["seed"] == 0


def test_rings_truth_is_ceo2(truth):
    rings = truth["rings"]
    assert [tuple(r["hkl"]) for r in rings][:3] == [(1, 1, 1), (2, 0, 0), (2, 2, 0)]
    for r in rings:
        d = 5.4113 / np.sqrt(sum(v * v for v in r["hkl"]))
        assert r["d_spacing_A"] == pytest.approx(d)
        tth = np.degrees(2 * np.arcsin(truth["wavelength_A"] / (2 * d)))
        assert r["two_theta_deg"] == pytest.approx(tth)
        assert r["q_A^-1"] == pytest.approx(2 * np.pi / d)
        assert r["q_nm^-1"] == pytest.approx(20 * np.pi / d)
    assert max(r["relative_intensity"] for r in rings) == 1.0
    assert max(r["two_theta_deg"] for r in rings) < 38.8


def _profile_peak(frames: np.ndarray, tth: np.ndarray, lo: float, hi: float) -> float:
    mean = frames.mean(axis=0)
    edges = np.arange(lo, hi, 0.05)
    s, _ = np.histogram(tth, edges, weights=mean)
    c, _ = np.histogram(tth, edges)
    prof = np.where(c > 0, s / np.maximum(c, 1), 0)
    k = int(np.argmax(prof))
    return 0.5 * (edges[k] + edges[k + 1])


@pytest.mark.parametrize("flip", [False, True])
def test_ring_position_agrees_with_pyfai(tmp_path, flip):
    import pyFAI

    s = simulate_scan(
        tmp_path,
        SimulationConfig(map_shape=(2, 3), frame_shape=(128, 128), xrf=False, flip_ud=flip),
    )
    truth = json.loads(s.truth.read_text())
    assert truth["flip_ud"] is flip
    strongest = max(truth["rings"], key=lambda r: r["relative_intensity"])
    ai = pyFAI.load(str(s.poni))
    tth = ai.center_array((128, 128), unit="2th_deg")
    with h5py.File(s.path, "r") as f:
        frames = f[EXC][...]
        assert "xspress3" not in f["entry/instrument"]
    lo, hi = strongest["two_theta_deg"] - 2, strongest["two_theta_deg"] + 2
    if flip:  # as written the rings do not sit where the PONI says; flipped back they do
        assert abs(_profile_peak(frames, tth, lo, hi) - strongest["two_theta_deg"]) > 0.1
        frames = frames[:, ::-1]
    assert _profile_peak(frames, tth, lo, hi) == pytest.approx(strongest["two_theta_deg"], abs=0.1)


def test_flip_ud_flips_the_same_frames(tmp_path):
    cfg = dict(map_shape=(1, 2), frame_shape=(32, 48), xrf=False)
    a = simulate_scan(tmp_path / "a", SimulationConfig(**cfg))
    b = simulate_scan(tmp_path / "b", SimulationConfig(**cfg, flip_ud=True))
    with h5py.File(a.path, "r") as fa, h5py.File(b.path, "r") as fb:
        np.testing.assert_array_equal(fa[EXC][...][:, ::-1], fb[EXC][...])


def test_xrf_peaks_at_ka_channels(scan, truth):
    with h5py.File(scan.path, "r") as f:
        spectra = f[XSP][...].sum(axis=0).astype(float)  # (C, B) summed over the map
        offset = f["entry/instrument/xspress3/energy_offset"][()]
        gain = f["entry/instrument/xspress3/energy_gain"][()]
    x = truth["xrf"]
    np.testing.assert_allclose(offset, x["energy_offset_eV"])
    np.testing.assert_allclose(gain, x["energy_gain_eV"])
    assert np.all(np.abs(gain / gain.mean() - 1) < 0.004) and np.ptp(gain) > 0
    assert np.all(np.abs(offset) <= 20)
    for el, info in x["elements"].items():
        ka1 = info["lines"]["Ka1"]
        for c in range(spectra.shape[0]):
            expected = (ka1 - offset[c]) / gain[c]
            lo, hi = int(expected) - 3, int(expected) + 4
            peak = lo + int(np.argmax(spectra[c, lo:hi]))
            assert abs(peak - expected) <= 1.0, (el, c, peak, expected)
    # elastic peak at the incident energy
    e0 = (17000 - offset[0]) / gain[0]
    assert abs(np.argmax(spectra[0, int(e0) - 5 : int(e0) + 6]) + int(e0) - 5 - e0) <= 1.0


def test_xrf_lines_from_xraydb(truth):
    import xraydb

    fe = truth["xrf"]["elements"]["Fe"]["lines"]
    assert fe["Ka1"] == pytest.approx(6405.2)
    assert set(fe) == set(xraydb.xray_lines("Fe", "K"))
    assert list(truth["xrf"]["elements"]) == ["Fe", "Co", "Ni", "Cu", "Zn"]


@pytest.mark.parametrize("shape", [(4, 5), (12, 16), (3, 7), (10, 10)])
def test_element_patterns_distinct(shape):
    from hpcproc.nexus.simulator import _patterns

    pats = _patterns(5, shape, np.random.default_rng(0))
    for p in pats:
        assert p.shape == shape and p.min() >= 0 and p.max() <= 1 and np.ptp(p) > 0
    for a, b in combinations(pats, 2):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.5


def test_truth_patterns_used(scan, truth):
    """The XRF signal of an element follows its truth pattern across the map."""
    els = truth["xrf"]["elements"]
    with h5py.File(scan.path, "r") as f:
        data = f[XSP][...].sum(axis=1).astype(float)  # (N, B), channels summed
        gain = f["entry/instrument/xspress3/energy_gain"][()].mean()
        offset = f["entry/instrument/xspress3/energy_offset"][()].mean()
    pat = np.array(els["Fe"]["pattern"])
    assert pat.shape == (4, 5)
    k = int(np.rint((els["Fe"]["lines"]["Ka1"] - offset) / gain))
    fe = data[:, k - 1 : k + 2].sum(axis=1).reshape(4, 5)
    assert np.corrcoef(fe.ravel(), pat.ravel())[0, 1] > 0.9
    assert np.array(truth["phase_intensity"]).shape == (4, 5)


def test_default_config_values():
    c = SimulationConfig()
    assert c.map_shape == (12, 16) and c.frame_shape == (256, 256)
    assert (c.channels, c.bins, c.energy_kev, c.beamline) == (8, 4096, 17.0, "i18")
    assert c.elements == ("Fe", "Co", "Ni", "Cu", "Zn")
    with pytest.raises(ValueError):
        SimulationConfig(xrd=False, xrf=False)


def test_xrf_only_scan(tmp_path):
    s = simulate_scan(tmp_path, SimulationConfig(map_shape=(2, 2), xrd=False, bins=256))
    assert s.poni is None
    with h5py.File(s.path, "r") as f:
        assert _s(f["entry"].attrs["default"]) == "xspress3"
        assert "excalibur" not in f["entry/instrument"]


# --- read_scan_info ---------------------------------------------------------------------------
def test_read_scan_info(scan):
    info = read_scan_info(scan.path)
    assert isinstance(info, ScanInfo)
    assert info.path == scan.path.absolute()
    assert info.scan_id == "i18-000001" and info.beamline == "i18" and info.visit == "cm12345-1"
    assert info.shape == (4, 5) and info.axes == ("y", "x") and info.n_points == 20
    np.testing.assert_allclose(info.axis_values["y"], [0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(info.axis_values["x"], [0, 0.1, 0.2, 0.3, 0.4])
    assert info.axis_units == {"y": "mm", "x": "mm"}
    assert info.finished is True
    assert info.start_time is not None and info.end_time >= info.start_time
    assert info.scan_command.startswith("mapscan") and info.title
    d = info.datasets[EXC]
    assert d.shape == (20, 64, 64) and d.dtype == "uint16" and d.chunks == (1, 64, 64)
    assert d.compression == "blosc" and d.virtual is False
    assert info.datasets["/entry/excalibur/data"].compression == "blosc"  # hard link listed
    assert info.datasets[XSP].dtype == "uint32"
    assert info.datasets["/entry/sample/x"].compression is None
    assert {
        "NXroot",
        "NXentry",
        "NXinstrument",
        "NXdetector",
        "NXdata",
        "NXsample",
        "NXcollection",
        "NXbeam",
    } <= info.nx_classes
    assert info.metadata()["id"] == "i18-000001"
    # not held open: the file can be opened for writing right away
    with h5py.File(scan.path, "a"):
        pass


def test_read_scan_info_unfinished(tmp_path):
    s = simulate_scan(
        tmp_path,
        SimulationConfig(
            map_shape=(2, 2),
            frame_shape=(16, 16),
            bins=64,
            finished=False,
            scan_number=42,
            beamline="i14",
        ),
    )
    info = read_scan_info(s.path)
    assert info.finished is False and info.end_time is None
    assert info.scan_id == "i14-000042" and s.path.name == "i14-000042.nxs"


def test_read_scan_info_fallback_1d(tmp_path):
    p = tmp_path / "i18-000007.nxs"
    with h5py.File(p, "w") as f:
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        e.create_dataset("data/data", data=np.zeros((7, 3)), compression="gzip")
    info = read_scan_info(p)
    assert info.shape == (7,) and info.axes == ("point",)
    assert info.axis_values["point"] == tuple(float(i) for i in range(7))
    assert info.beamline == "i18" and info.scan_id == "i18-000007"  # from the file name
    assert info.datasets["/entry/data/data"].compression == "gzip"
    assert info.finished is True  # closed, no end-of-scan marker: no writer holds it
    assert info.layout == "nexus" and any("shape (7,)" in w for w in info.warnings)


def test_scan_error_missing_file(tmp_path):
    with pytest.raises(ScanError, match="not found"):
        read_scan_info(tmp_path / "nope.nxs")


def test_scan_error_truncated(tmp_path):
    s = simulate_scan(tmp_path, SimulationConfig(map_shape=(2, 2), frame_shape=(32, 32), bins=64))
    data = s.path.read_bytes()
    s.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanError) as e:
        read_scan_info(s.path)
    msg = str(e.value)
    assert str(s.path.absolute()) in msg and "\n" not in msg


def test_scan_error_not_hdf5(tmp_path):
    p = tmp_path / "scan.nxs"
    p.write_text("this is not HDF5\n" * 100)
    with pytest.raises(ScanError, match=r"scan.nxs: not a format hpcproc reads \(it reads: "):
        read_scan_info(p)


def test_scan_error_no_entry(tmp_path):
    p = tmp_path / "empty.nxs"
    with h5py.File(p, "w") as f:
        f["something"] = 1
    with pytest.raises(ScanError, match="an HDF5 file of no layout hpcproc knows"):
        read_scan_info(p)


def test_missing_beamline_is_a_warning_not_an_error(tmp_path, monkeypatch):
    p = tmp_path / "scan.nxs"  # a name that does not carry the beamline either
    with h5py.File(p, "w") as f:
        f.create_group("entry").create_dataset("data", data=np.zeros(5))
    monkeypatch.delenv("HPCPROC_DEFAULT_BEAMLINE", raising=False)
    info = read_scan_info(p)
    assert info.beamline == "unknown" and any("no beamline" in w for w in info.warnings)
    monkeypatch.setenv("HPCPROC_DEFAULT_BEAMLINE", "i20")
    assert read_scan_info(p).beamline == "i20"
    assert read_scan_info(p, beamline="b18").beamline == "b18"


def test_scan_error_is_one_line(tmp_path):
    with pytest.raises(ScanError) as e:
        read_scan_info(Path(tmp_path) / "x" / "y.nxs")
    assert "\n" not in str(e.value) and "y.nxs" in str(e.value)


CRASHED_WRITER = """
import os, sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "w", libver="latest")
e = f.create_group("entry")
d = e.create_dataset("data", shape=(0, 64, 64), maxshape=(None, 64, 64), chunks=(1, 64, 64),
                     dtype="u2")
f.swmr_mode = True
for i in range(20):
    d.resize(i + 1, axis=0)
    d[i] = np.random.default_rng(i).integers(0, 60000, (64, 64))
    d.flush()
os._exit(0)  # crash: the file keeps its "open for SWMR write" flags
"""


def test_crashed_swmr_writer_file_opens_swmr(tmp_path):
    """A file left flagged "open for SWMR write" fails a plain open; the SWMR open reads it."""
    import subprocess
    import sys

    from hpcproc.nexus.frames import FrameReader

    p = tmp_path / "i18-000003.nxs"
    subprocess.run([sys.executable, "-c", CRASHED_WRITER, str(p)], check=True, timeout=60)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(p, "r")
    info = read_scan_info(p)
    assert info.shape == (20,) and info.scan_id == "i18-000003" and info.finished is False
    with FrameReader(p, "/entry/data") as r:
        assert r.swmr is True and r.n_frames == 20
        np.testing.assert_array_equal(
            r.read(19), np.random.default_rng(19).integers(0, 60000, (64, 64))
        )
