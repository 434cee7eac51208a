"""Real files from upstream projects' public test data (tests/data/real/, see its MANIFEST.md),
read and processed as scientists bring them: no conversion. Each test checks a number against
the upstream library's own reading of the same file (pyFAI, larch) or the file's own values."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcproc.errors import InputError, ScanError
from hpcproc.formats import read_scan_info
from hpcproc.jobs import run_job
from hpcproc.recipes import find_recipe

REAL = Path(__file__).parent / "data" / "real"
CEO2 = REAL / "xrd" / "CeO2_Pilatus1M.tif"
CEO2_PONI = REAL / "xrd" / "CeO2_Pilatus1M.poni"
CU_XDI = REAL / "xafs" / "cu_metal_rt.xdi"
CU_XMU = REAL / "xafs" / "cu_rt01.xmu"
I18 = REAL / "xrf" / "i18_test_data.nxs"
I16 = REAL / "gda" / "1049598.nxs"
I13_NXTOMO = REAL / "tomo" / "24888.nxs"
DIAD = REAL / "tomo" / "k11-18014.nxs"
TOOTH = REAL / "tomo" / "tooth.h5"
CSR = ("bbox", "csr", "cython")


def _copy(tmp_path: Path, *files: Path) -> list[Path]:
    """Copies beside each other in tmp_path (processed/ is written beside the scan)."""
    out = []
    for f in files:
        shutil.copy(f, tmp_path / f.name)
        out.append(tmp_path / f.name)
    return out


def _results(processed: Path, step: str) -> dict:
    with h5py.File(processed) as f:
        g = f[f"/entry/{step}/results"]
        return {k: (v.decode() if isinstance(v := g[k][()], bytes) else v) for k in g}


def _peaks(x: np.ndarray, y: np.ndarray, n: int = 5) -> np.ndarray:
    from scipy.signal import find_peaks

    idx, props = find_peaks(y, prominence=0.05 * (y.max() - np.median(y)))
    strongest = idx[np.argsort(props["prominences"])[::-1][:n]]
    return np.sort(x[strongest])


# ---------------------------------------------------------------- the manifest


def test_manifest_lists_every_real_file_within_the_size_limits():
    manifest = (REAL / "MANIFEST.md").read_text()
    files = [
        p
        for p in REAL.rglob("*")
        if p.is_file() and p.name not in ("MANIFEST.md", ".gitignore") and "LICENSES" not in p.parts
    ]
    assert len(files) >= 9
    for p in files:
        rel = p.relative_to(REAL).as_posix()
        assert rel in manifest, f"{rel} is not in MANIFEST.md"
        assert p.stat().st_size < 5 * 2**20, rel
    assert sum(p.stat().st_size for p in files) < 25 * 2**20
    for licence in re.findall(r"LICENSES/[\w.-]+\.txt", manifest):
        assert (REAL / licence).is_file(), licence


# ---------------------------------------------------------------- XRD: a calibrant TIFF


def test_ceo2_tiff_integrates_like_pyfai_on_the_image(tmp_path, client, lims):
    """A Pilatus TIFF with its Dioptas PONI: the orientation is found (Dioptas calibrates on
    the image flipped up-down from fabio's reading) and the pattern is pyFAI's own."""
    import fabio
    import pyFAI

    tif, _poni = _copy(tmp_path, CEO2, CEO2_PONI)
    scan = read_scan_info(tif)
    assert (scan.format, scan.layout, scan.shape, scan.roles) == (
        "image",
        "image",
        (1,),
        {"frames": "/frames"},
    )
    assert scan.datasets["/frames"].shape == (1, 1043, 981)  # one frame, not 1043 rows
    params = {"unit": "2th_deg", "npt": 2000}
    outcome = run_job(find_recipe("xrd-map"), tif, params, lims=lims, client=client)
    assert outcome.status == "success", outcome
    with h5py.File(outcome.processed) as f:
        ours = f["/entry/integrate/integrated/I"][()].reshape(-1)
        tth = f["/entry/integrate/integrated/two_theta"][()]
    chosen = _results(outcome.processed, "integrate")
    assert chosen["flip"] == "ud" and chosen["orientation_margin"] > 2
    assert chosen["masked_invalid_in_first_frame"] > 10_000  # the module gaps (value -1)

    image = fabio.open(str(CEO2)).data
    flipped = np.flipud(image)
    ai = pyFAI.load(str(CEO2_PONI))
    ref = ai.integrate1d(flipped, 2000, unit="2th_deg", method=CSR, mask=flipped < 0)
    assert np.corrcoef(ours, ref.intensity)[0, 1] >= 0.99
    np.testing.assert_allclose(_peaks(tth, ours), _peaks(ref.radial, ref.intensity), atol=0.02)

    # flip given: it overrides auto, and the wrong way round is a different pattern
    wrong = run_job(
        find_recipe("xrd-map"), tif, {**params, "flip": "none"}, lims=lims, client=client
    )
    with h5py.File(wrong.processed) as f:
        raw = f["/entry/integrate/integrated/I"][()].reshape(-1)
    assert _results(wrong.processed, "integrate")["flip"] == "none"
    assert np.corrcoef(raw, ref.intensity)[0, 1] < 0.9


def test_poni_of_another_detector_is_a_clear_error(tmp_path, client, lims):
    tif, poni = _copy(tmp_path, CEO2, CEO2_PONI)
    poni.write_text(poni.read_text() + "Detector: Pilatus300k\n")
    outcome = run_job(find_recipe("xrd-map"), tif, {}, lims=lims, client=client)
    assert outcome.status == "failed"
    (step,) = lims.job(outcome.job_id).steps
    assert "is 619x487 pixels, the frames of /frames are 1043x981" in step.message


# ---------------------------------------------------------------- XAFS: XDI and column files


def test_xdi_cu_foil_gives_larchs_e0(tmp_path, client, lims):
    from larch import Group
    from larch.io import read_xdi
    from larch.xafs import pre_edge

    (xdi,) = _copy(tmp_path, CU_XDI)
    scan = read_scan_info(xdi)
    assert (scan.format, scan.layout, scan.shape) == ("xdi", "xafs", (408,))
    assert scan.roles["it"] == "/columns/itrans" and scan.beamline == "aps-13id"
    outcome = run_job(find_recipe("xafs-b18"), xdi, {}, lims=lims, client=client)
    assert outcome.status == "success", outcome
    e0 = _results(outcome.processed, "normalise")["e0"]
    g = read_xdi(str(CU_XDI))
    ref = Group()
    pre_edge(g.energy, np.log(g.i0 / g.itrans), group=ref)
    assert abs(e0 - ref.e0) <= 1.0
    assert abs(e0 - 8979.0) < 5  # Cu K edge


def test_column_file_with_mu_recorded(tmp_path, client, lims):
    (xmu,) = _copy(tmp_path, CU_XMU)
    scan = read_scan_info(xmu)
    assert scan.format == "columns" and scan.roles["mu"] == "/columns/mu"
    outcome = run_job(find_recipe("xafs-b18"), xmu, {"mode": "mu"}, lims=lims, client=client)
    assert outcome.status == "success", outcome
    assert abs(_results(outcome.processed, "normalise")["e0"] - 8979.0) < 5


# ---------------------------------------------------------------- XRF: an I18 Xspress3 map


def test_i18_xspress3_map_windows_match_the_stored_rois(tmp_path, client, lims):
    """GDA's I18 layout: entry1 without NX_class, MCAs (ny, nx, channels, bins), no energy
    calibration stored (10 eV per bin, from the file's own ROI windows)."""
    (path,) = _copy(tmp_path, I18)
    scan = read_scan_info(path)
    assert (scan.layout, scan.shape) == ("gda", (2, 2))
    assert scan.roles["mca"] == "/entry1/instrument/xspress3/MCAs"
    assert scan.finished  # a closed file without an end marker: no writer holds it
    recipe = find_recipe("xrf-map")
    with pytest.raises(
        InputError, match=r"no energy calibration .* give the parameters energy_gain"
    ):
        run_job(recipe, path, {}, lims=lims, client=client)
    params = {"elements": "Co-Ka:50 Ti-Ka:40", "energy_gain": "10", "energy_offset": "0"}
    outcome = run_job(recipe, path, params, lims=lims, client=client)
    assert outcome.status == "success", outcome
    with h5py.File(outcome.processed) as f, h5py.File(I18) as raw:
        for line, roi in (("Co-Ka", "Co_K"), ("Ti-Ka", "Ti_K")):
            ours = f[f"/entry/windows/maps/{line}"][()]
            stored = raw[f"/entry1/instrument/xspress3/{roi}"][()].sum(axis=-1)
            assert ours.shape == (2, 2)
            np.testing.assert_allclose(ours, stored, rtol=0.05)


# ---------------------------------------------------------------- GDA scans, tomography files


def test_classic_gda_scan_has_its_shape_and_axes():
    scan = read_scan_info(I16)
    assert (scan.layout, scan.shape, scan.axes) == ("gda", (101,), ("h",))
    with h5py.File(I16) as f:
        h = f["/entry1/measurement/h"][()]
    np.testing.assert_allclose(scan.axis_values["h"], h)
    assert (scan.beamline, scan.visit) == ("i16", "mm36462-1")
    # the Pilatus frames are in a file that was not shipped: named, with the file
    frames = scan.roles["frames"]
    assert frames == "/entry1/instrument/pil3_100k/data"
    assert scan.missing_links[frames].endswith("1049598-pilatus3_100k-files/1049598.hdf")


def test_step_needing_a_dataset_behind_a_dangling_link_names_the_file(tmp_path, client, lims):
    nxs, _ = _copy(tmp_path, I16, CEO2_PONI)
    with pytest.raises(InputError) as e:
        run_job(find_recipe("xrd-map"), nxs, {"poni": str(tmp_path / CEO2_PONI.name)})
    message = str(e.value)
    assert "external link to" in message and "1049598.hdf, which is not there" in message
    assert "\n" not in message


def test_nxtomo_image_key_splits_into_darks_flats_projections():
    scan = read_scan_info(I13_NXTOMO)
    assert scan.layout == "nxtomo" and scan.shape == (111,)
    assert scan.roles["angles"] == "/entry1/tomo_entry/sample/rotation_angle"
    with h5py.File(I13_NXTOMO) as f:
        keys = f[scan.roles["image_key"]][()].astype(int)
    assert np.bincount(keys).tolist() == [91, 10, 10]  # projections, flats, darks
    assert scan.axis_values["rotation_angle"][0] == pytest.approx(-89.1)
    assert scan.axis_values["rotation_angle"][-1] == pytest.approx(90.9)


def test_diad_scan_with_dangling_links_says_which_files_are_missing():
    scan = read_scan_info(DIAD)
    assert (scan.beamline, scan.visit, scan.shape) == ("k11", "mg32775-1", (3201,))
    assert scan.roles["frames"] == "/entry/instrument/imaging/data"
    assert scan.missing_links[scan.roles["frames"]].endswith("k11-18014/k11-18014-imaging.h5")
    with h5py.File(DIAD) as f:
        keys = f[scan.roles["image_key"]][()]
    assert np.bincount(keys).tolist() == [3001, 100, 100]
    # the angle axis is behind a dangling link: a warning naming the file, never silent
    (warning,) = [w for w in scan.warnings if "axis" in w]
    assert "k11-18014-EtherCAT.h5, which is not there" in warning


def test_data_exchange_file():
    scan = read_scan_info(TOOTH)
    assert (scan.layout, scan.shape, scan.axes) == ("dxchange", (181,), ("theta",))
    assert scan.roles["flats"] == "/exchange/data_white"
    assert scan.roles["darks"] == "/exchange/data_dark"
    assert scan.datasets["/exchange/data"].shape == (181, 2, 640)
    assert max(scan.axis_values["theta"]) == pytest.approx(179.006, abs=0.01)


def test_placeholder_visit_never_blocks(tmp_path, monkeypatch):
    (path,) = _copy(tmp_path, I16)
    with h5py.File(path, "r+") as f:
        del f["/entry1/experiment_identifier"]
        f["/entry1/experiment_identifier"] = "DEFAULT"
    monkeypatch.delenv("HPCPROC_DEFAULT_VISIT", raising=False)
    scan = read_scan_info(path)
    assert scan.visit is None and any("placeholder visit 'DEFAULT'" in w for w in scan.warnings)
    assert read_scan_info(path, visit="cm12345-2").visit == "cm12345-2"
    monkeypatch.setenv("HPCPROC_DEFAULT_VISIT", "cm99999-1")
    assert read_scan_info(path).visit == "cm99999-1"


# ---------------------------------------------------------------- bad files


def test_a_file_of_another_kind_is_named_as_such(tmp_path):
    p = tmp_path / "notes.docx"
    p.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    with pytest.raises(ScanError) as e:
        read_scan_info(p)
    assert str(e.value).startswith(f"{p}: not a format hpcproc reads (it reads: NeXus/HDF5")
    truncated = tmp_path / "cut.tif"
    truncated.write_bytes(CEO2.read_bytes()[:5000])
    with pytest.raises(ScanError) as e:
        read_scan_info(truncated)
    assert "cut.tif" in str(e.value) and "\n" not in str(e.value)


def test_inspect_json_and_text(cli):
    r = cli("inspect", str(I16), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    for key in ("format", "layout", "shape", "axes", "datasets", "missing_links", "recipes"):
        assert key in report
    assert report["shape"] == [101] and report["axes"] == ["h"]
    assert "/entry1/instrument/pil3_100k/data" in report["missing_links"]
    assert report["recipes"]["xrd-map"]["applies"] is False
    text = cli("inspect", str(CEO2))
    assert text.exit_code == 0
    assert "format image, layout image" in text.output and "/frames" in text.output


def test_run_a_tiff_from_the_command_line(cli, tmp_path):
    tif, _ = _copy(tmp_path, CEO2, CEO2_PONI)
    r = cli("run", "xrd-map", str(tif), "--param", "npt=500", "--visit", "cm12345-3", "--json")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    (job,) = json.loads(r.output[r.output.index("[") :])
    assert job["status"] == "success"


def test_numbered_image_series_is_a_scan_of_its_files(tmp_path, client, lims):
    """Three EDF files (written by fabio from the CeO2 image) given as a glob: three points,
    each integrated like the one image."""
    import fabio

    image = fabio.open(str(CEO2)).data
    for i, scale in enumerate((1, 2, 3)):
        fabio.edfimage.EdfImage(data=image * scale).write(str(tmp_path / f"ceo2_{i:04d}.edf"))
    shutil.copy(CEO2_PONI, tmp_path / "ceo2.poni")
    pattern = tmp_path / "ceo2_*.edf"
    scan = read_scan_info(pattern)
    assert (scan.format, scan.shape, len(scan.files)) == ("image", (3,), 3)
    assert scan.datasets["/frames"].shape == (3, 1043, 981)
    params = {"poni": str(tmp_path / "ceo2.poni"), "npt": 500}
    outcome = run_job(find_recipe("xrd-map"), pattern, params, lims=lims, client=client)
    assert outcome.status == "success", outcome
    with h5py.File(outcome.processed) as f:
        patterns = f["/entry/integrate/integrated/I"][()].reshape(3, -1)
    np.testing.assert_allclose(patterns[1], 2 * patterns[0], rtol=1e-4)
    np.testing.assert_allclose(patterns[2], 3 * patterns[0], rtol=1e-4)


SNBL_SPEC = REAL / "xafs" / "ESRF_SNBL_2013.dat"
BM08_COLUMNS = REAL / "xafs" / "ESRF_BM08_LISA_2021.dat"


def _larch_e0(energy: np.ndarray, mu: np.ndarray) -> float:
    from larch import Group
    from larch.xafs import pre_edge

    g = Group()
    pre_edge(energy, mu, group=g)
    return float(g.e0)


def test_spec_file_through_silx(tmp_path, client, lims):
    """A SPEC file (ESRF SNBL): its first scan's columns, energy in keV read in eV, chambers
    named with --param; E0 as larch finds it on the same columns (Ge K edge)."""
    from silx.io.specfile import SpecFile

    (path,) = _copy(tmp_path, SNBL_SPEC)
    scan = read_scan_info(path)
    assert (scan.format, scan.layout, scan.shape) == ("spec", "xafs", (456,))
    assert scan.roles["energy"] == "/columns/ZapEnergy_eV" and scan.roles["i0"] == "/columns/Mon"
    assert any("2 scans in the SPEC file" in w for w in scan.warnings)
    params = {"it": "/columns/Ion1"}
    outcome = run_job(find_recipe("xafs-b18"), path, params, lims=lims, client=client)
    assert outcome.status == "success", outcome
    first = SpecFile(str(SNBL_SPEC))[0]
    col = dict(zip(first.labels, first.data, strict=True))
    ref = _larch_e0(col["ZapEnergy"] * 1000, np.log(col["Mon"] / col["Ion1"]))
    e0 = _results(outcome.processed, "normalise")["e0"]
    assert abs(e0 - ref) <= 1.0 and abs(e0 - 11103) < 15  # Ge K edge


def test_beamline_column_names_map_to_roles(tmp_path, client, lims):
    """ESRF BM08's own column names (eBraggEnergy, I0_EH1, I1_EH1) are the roles. The sample
    (dilute) shows no edge in transmission, which is said; its reference foil's mu does."""
    (path,) = _copy(tmp_path, BM08_COLUMNS)
    scan = read_scan_info(path)
    assert scan.roles == {
        "energy": "/columns/ebraggenergy",
        "i0": "/columns/i0_eh1",
        "it": "/columns/i1_eh1",
        "mu": "/columns/mu",
    }
    recipe = find_recipe("xafs-b18")
    weak = run_job(recipe, path, {}, lims=lims, client=client)
    (step,) = lims.job(weak.job_id).steps
    assert weak.status == "failed" and "no edge found" in step.message
    params = {"mode": "mu", "mu": "/columns/mu_ref"}
    outcome = run_job(recipe, path, params, lims=lims, client=client)
    assert outcome.status == "success", outcome
    raw = np.loadtxt(BM08_COLUMNS)
    ref = _larch_e0(raw[:, 0], raw[:, 6])
    assert abs(_results(outcome.processed, "normalise")["e0"] - ref) <= 1.0


def test_a_bad_geometry_is_one_line_on_the_terminal(tmp_path):
    """The hpcproc command in a process of its own, as a person runs it: the step's failure is
    one line, with no worker traceback on the terminal."""
    import os
    import subprocess
    import sys

    tif, poni = _copy(tmp_path, CEO2, CEO2_PONI)
    poni.write_text(poni.read_text() + "Detector: Pilatus300k\n")
    env = {**os.environ, "HPCPROC_HOME": str(tmp_path / "home")}
    env.pop("HPCPROC_LIMS_URL", None)
    run = subprocess.run(
        [sys.executable, "-m", "hpcproc.cli", "run", "xrd-map", str(tif), "--cluster", "local"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    said = run.stdout + run.stderr
    assert run.returncode == 1, said
    assert "detector Pilatus 300k is 619x487 pixels, the frames of /frames are 1043x981" in said
    assert "Traceback" not in said and "Compute Failed" not in said
