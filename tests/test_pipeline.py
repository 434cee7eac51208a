"""One scan end to end: recipe -> Dask -> processed NeXus -> LIMS, checked against ground truth."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from scipy.signal import find_peaks
from silx.io import nxdata as silx_nxdata

from hpcproc.errors import InputError
from hpcproc.jobs import run_job
from hpcproc.recipes import find_recipe, load_recipe_text
from hpcproc.status import Status


@pytest.fixture(scope="module")
def xrd_job(sim_scan, client, tmp_path_factory):
    from hpcproc.lims import Lims

    db = Lims(f"sqlite:///{tmp_path_factory.mktemp('lims') / 'lims.sqlite'}")
    recipe = find_recipe("xrd-map")
    outcome = run_job(recipe, sim_scan.path, {"npt": 1000}, lims=db, client=client)
    yield recipe, outcome, db
    db.close()


def test_xrd_rings_match_ground_truth(xrd_job, truth):
    _, outcome, _ = xrd_job
    assert outcome.status == Status.SUCCESS
    with h5py.File(outcome.processed, "r") as f:
        data = f["entry/integrate/integrated"]
        intensity = data["I"][()]
        q = data["q"][()]
    assert intensity.shape == (6, 8, 1000)
    assert not np.isnan(intensity).any(), "every scan point was integrated"
    # The four strongest simulated rings appear as peaks within 0.05 nm^-1 of the truth
    # (bins here are ~0.05 nm^-1 wide).
    errors = _ring_errors(intensity.mean(axis=(0, 1)), q, truth)
    assert max(errors) < max(0.05, 1.5 * (q[1] - q[0])), errors


def test_processed_file_provenance_and_default_chain(xrd_job, sim_scan):
    recipe, outcome, db = xrd_job
    job = db.job(outcome.job_id)
    step = job.steps[0]
    with h5py.File(outcome.processed, "r") as f:
        assert f.attrs["default"] == "entry"
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry.attrs["default"] == "integrate"
        proc = entry["integrate"]
        assert proc.attrs["NX_class"] == "NXprocess"
        assert proc["program"][()].decode() == "hpcproc xrd_integrate"
        assert proc["sequence_index"][()] == 1
        assert proc["version"][()].decode()
        assert proc["date"][()].decode().startswith("20")
        assert proc["status"][()].decode() == "success"
        assert proc["progress"][()] == 48
        assert proc["parameters/npt"][()] == 1000
        assert proc["parameters"].attrs["NX_class"] == "NXparameters"
        prov = json.loads(proc["provenance/data"][()])
        assert prov["recipe"] == "xrd-map"
        assert prov["recipe_sha256"] == recipe.sha256
        assert prov["input_file"] == str(sim_scan.path)
        assert prov["input_datasets"] == ["/entry/instrument/excalibur/data"]
        assert prov["lims"]["processing_job_id"] == job.id
        assert prov["lims"]["auto_proc_program_id"] == step.id
        assert prov["lims"]["data_collection_id"] == job.dc_id
        assert proc.attrs["default"] == "integrated"
        data = proc["integrated"]
        assert data.attrs["NX_class"] == "NXdata"
        assert data.attrs["signal"] == "I"
        assert list(data.attrs["axes"]) == ["y", "x", "q"]
        assert data.attrs["q_indices"] == 2
        assert data["y"].shape == (6,) and data["x"].shape == (8,)
        # The raw scan is reachable from the processed file.
        assert entry["raw/instrument/name"][()].decode() == "i18"
        # A NeXus viewer's own reader (silx, as in silx view and PyMca) finds the map to plot.
        default = silx_nxdata.get_default(f)
        assert default is not None and default.signal.name == "/entry/integrate/integrated/I"
        assert [a.name for a in default.axes] == [
            "/entry/integrate/integrated/y",
            "/entry/integrate/integrated/x",
            "/entry/integrate/integrated/q",
        ]


def test_lims_records_the_job(xrd_job, sim_scan):
    _, outcome, db = xrd_job
    job = db.job(outcome.job_id)
    assert job.recipe == "xrd-map"
    assert job.parameters["npt"] == 1000
    assert job.parameters["unit"] == "q_nm^-1"
    assert job.scan_file == sim_scan.path
    assert job.status == Status.SUCCESS
    (step,) = job.steps
    assert (step.step_id, step.uses, step.status) == ("integrate", "xrd_integrate", "success")
    assert step.start is not None and step.end is not None and step.start <= step.end
    assert "dask_dashboard" in step.environment
    assert [a.path for a in step.attachments] == [outcome.processed]


def test_xrf_maps_correlate_with_placed_patterns(sim_scan, truth, client, lims):
    outcome = run_job(find_recipe("xrf-map"), sim_scan.path, {}, lims=lims, client=client)
    assert outcome.status == Status.SUCCESS
    with h5py.File(outcome.processed, "r") as f:
        maps = f["entry/windows/maps"]
        assert maps.attrs["signal"] == "Fe-Ka"
        assert list(maps.attrs["auxiliary_signals"]) == ["Co-Ka", "Ni-Ka", "Cu-Ka", "Zn-Ka"]
        for element, info in truth["xrf"]["elements"].items():
            measured = maps[f"{element}-Ka"][()]
            placed = np.asarray(info["pattern"])
            r = np.corrcoef(measured.ravel(), placed.ravel())[0, 1]
            assert r > 0.9, f"{element}: correlation {r:.3f} with its placed pattern"


RECIPE_WITH_FAILURE = """
name: partly-broken
description: first step has an unreadable PONI file, second needs it, third is independent
steps:
  - id: integrate
    uses: xrd_integrate
    with: {poni: "{scan.dir}/broken.poni", npt: 200}
  - id: again
    uses: xrd_integrate
    needs: [integrate]
    with: {poni: "{scan.dir}/{scan.stem}.poni", npt: 200}
  - id: windows
    uses: xrf_windows
    with: {elements: [Fe-Ka]}
"""


def test_failed_step_skips_its_dependents_only(sim_scan, client, lims):
    (sim_scan.path.parent / "broken.poni").write_text("this is not a PONI file\n")
    recipe = load_recipe_text(RECIPE_WITH_FAILURE, "partly-broken.yaml")
    outcome = run_job(recipe, sim_scan.path, {}, lims=lims, client=client)
    assert outcome.steps == {
        "integrate": Status.FAILED,
        "again": Status.SKIPPED,
        "windows": Status.SUCCESS,
    }
    job = lims.job(outcome.job_id)
    by_id = {s.step_id: s for s in job.steps}
    assert by_id["integrate"].status == "failed"
    assert "broken.poni" in by_id["integrate"].message
    assert by_id["again"].status == "skipped"
    assert "integrate" in by_id["again"].message
    assert by_id["again"].start is None  # a skipped step never started
    assert by_id["windows"].status == "success"
    with h5py.File(outcome.processed, "r") as f:
        assert f["entry/integrate/status"][()].decode() == "failed"
        assert "broken.poni" in f["entry/integrate/message"][()].decode()
        assert f["entry/again/status"][()].decode() == "skipped"
        assert not np.isnan(f["entry/windows/maps/Fe-Ka"][()]).any()


def test_corrupt_frame_fails_the_step_and_keeps_the_rest(sim_scan, client, lims, tmp_path):
    broken = tmp_path / sim_scan.path.name
    shutil.copy(sim_scan.path, broken)
    shutil.copy(sim_scan.poni, tmp_path / sim_scan.poni.name)
    bad_index = 40
    with h5py.File(broken, "r+") as f:
        dset = f["/entry/instrument/excalibur/data"]
        dset.id.write_direct_chunk((bad_index, 0, 0), b"\x00garbage" * 10)
    outcome = run_job(find_recipe("xrd-map"), broken, {"npt": 200}, lims=lims, client=client)
    assert outcome.steps["integrate"] == Status.FAILED
    step = lims.job(outcome.job_id).steps[0]
    assert str(bad_index) in step.message
    with h5py.File(outcome.processed, "r") as f:
        done = ~np.isnan(f["entry/integrate/integrated/I"][()]).all(axis=-1)
        # Only the batch holding the bad frame is lost (batches here are at most 12 frames).
        lost = ~done.ravel()
        assert lost[bad_index] and lost.sum() <= 12
        assert not lost[: bad_index - 12].any()
        assert f"{48 - lost.sum()} of 48 points processed" in step.message
        assert f["entry/integrate/status"][()].decode() == "failed"


def test_bad_parameter_records_nothing(sim_scan, client, lims):
    with pytest.raises(InputError, match="npt"):
        run_job(find_recipe("xrd-map"), sim_scan.path, {"npt": "50"}, lims=lims, client=client)
    with pytest.raises(InputError, match="npt"):
        run_job(find_recipe("xrd-map"), sim_scan.path, {"npt": "lots"}, lims=lims, client=client)
    assert lims.jobs() == []


def test_missing_dataset_is_refused_before_recording(tmp_path, client, lims):
    from hpcproc.nexus.simulator import SimulationConfig, simulate_scan

    xrf_only = simulate_scan(tmp_path, SimulationConfig(map_shape=(2, 3), xrd=False, bins=512))
    with pytest.raises(InputError, match=r"frames: layout diamond found no frames dataset in i18"):
        run_job(
            find_recipe("xrd-map"),
            xrf_only.path,
            {"poni": str(xrf_only.path)},
            lims=lims,
            client=client,
        )
    assert lims.jobs() == []


def _ring_errors(pattern: np.ndarray, q: np.ndarray, truth: dict) -> list[float]:
    """Distance from each of the four strongest rings to the nearest peak of ``pattern``."""
    peaks, _ = find_peaks(pattern, prominence=pattern.max() * 0.05)
    rings = [r for r in truth["rings"] if q[0] < r["q_nm^-1"] < q[-1]]
    strong = sorted(rings, key=lambda r: -r["relative_intensity"])[:4]
    return [float(np.min(np.abs(q[peaks] - r["q_nm^-1"]), initial=np.inf)) for r in strong]


def test_detector_orientation_is_a_parameter_and_recorded(tmp_path, client, lims):
    """FACTS.md's pitfall: frames stored upside down relative to their PONI give a wrong
    pattern unless the recipe flips them; the flip used is in the file's provenance."""
    from hpcproc.nexus.simulator import SimulationConfig, simulate_scan

    sim = simulate_scan(tmp_path, SimulationConfig(map_shape=(2, 3), xrf=False, flip_ud=True))
    truth = json.loads(sim.truth.read_text())
    errors = {}
    for flip in ("none", "ud"):
        outcome = run_job(
            find_recipe("xrd-map"), sim.path, {"flip": flip, "npt": 1000}, lims=lims, client=client
        )
        with h5py.File(outcome.processed, "r") as f:
            data = f["entry/integrate/integrated"]
            errors[flip] = _ring_errors(data["I"][()].mean(axis=(0, 1)), data["q"][()], truth)
            assert f["entry/integrate/parameters/flip"][()].decode() == flip
    assert max(errors["ud"]) < 0.06, errors
    assert max(errors["none"]) > 0.2, errors


def test_cake_output(sim_scan, client, lims):
    outcome = run_job(
        find_recipe("xrd-map"),
        sim_scan.path,
        {"cake": "true", "npt": 300},
        lims=lims,
        client=client,
    )
    with h5py.File(outcome.processed, "r") as f:
        cake = f["entry/integrate/cake"]
        assert cake["I"].shape == (6, 8, 360, 300)
        assert list(cake.attrs["axes"]) == ["y", "x", "chi", "q"]
        assert cake["chi"].shape == (360,)
        # The cake, averaged over azimuth where the detector has pixels, gives the same rings.
        mean_1d = f["entry/integrate/integrated/I"][()].mean(axis=(0, 1))
        mean_2d = np.nanmean(np.where(cake["I"][()] > 0, cake["I"][()], np.nan), axis=(0, 1, 2))
        ok = ~np.isnan(mean_2d)
        assert np.corrcoef(mean_1d[ok], mean_2d[ok])[0, 1] > 0.95
