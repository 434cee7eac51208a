"""B18 XAFS: simulated energy scan -> recipe xafs-b18 -> larch normalisation, against truth.

Bounds: E0 within 1 eV of the model's (XANES steps are 0.5 eV), edge step within 3 % (the
polynomial post-edge fit through the EXAFS wiggles alone is off by ~2 % on this model, noise
adds ~0.3 %), normalised mu ~ 0 over the pre-edge and ~ 1 over the post-edge fit range.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcproc.errors import InputError, StepError
from hpcproc.formats import read_scan_info
from hpcproc.jobs import run_job
from hpcproc.lims import Lims
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan
from hpcproc.nexus.xafs_sim import XafsConfig, simulate_xafs
from hpcproc.recipes import find_recipe
from hpcproc.status import Status
from hpcproc.steps.xafs import XafsNormalise, XafsParams, monotonic, normalise

E0_TOL_EV = 1.0
STEP_TOL = 0.03


@pytest.fixture(scope="module")
def xafs_scan(tmp_path_factory: pytest.TempPathFactory):
    """A B18 Fe K-edge scan with I0, It, Iref and If (400 points)."""
    return simulate_xafs(tmp_path_factory.mktemp("xafs"), XafsConfig(fluorescence=True, seed=1))


@pytest.fixture(scope="module")
def xafs_truth(xafs_scan) -> dict:
    return json.loads(Path(xafs_scan.truth).read_text())


@pytest.fixture(scope="module")
def xafs_job(xafs_scan, client, tmp_path_factory):
    db = Lims(f"sqlite:///{tmp_path_factory.mktemp('lims') / 'lims.sqlite'}")
    outcome = run_job(find_recipe("xafs-b18"), xafs_scan.path, {}, lims=db, client=client)
    yield outcome, db
    db.close()


def _results(processed: Path, step: str = "normalise") -> dict:
    with h5py.File(processed, "r") as f:
        group = f[f"entry/{step}/results"]
        return {k: group[k][()] for k in group}


def test_transmission_e0_and_edge_step_match_truth(xafs_job, xafs_truth):
    outcome, _ = xafs_job
    assert outcome.status == Status.SUCCESS, outcome.steps
    values = _results(outcome.processed)
    e0_error = float(values["e0"]) - xafs_truth["e0_eV"]
    step_error = float(values["edge_step"]) / xafs_truth["edge_step"] - 1.0
    assert abs(e0_error) < E0_TOL_EV, f"E0 off by {e0_error:+.2f} eV"
    assert abs(step_error) < STEP_TOL, f"edge step off by {step_error:+.2%}"
    assert values["edge"].decode() == "Fe K"
    # The fitted pre-edge line at E0 is the model's (its slope is only loosely fixed by the
    # 120 eV fit range and the noise, so the line is compared where it matters).
    pre_at_e0 = float(values["pre_offset"]) + float(values["pre_slope"]) * float(values["e0"])
    assert pre_at_e0 == pytest.approx(xafs_truth["pre_edge"]["at_e0"], abs=0.02)


def test_normalised_spectrum_is_0_before_and_1_after_the_edge(xafs_job):
    outcome, _ = xafs_job
    values = _results(outcome.processed)
    e0 = float(values["e0"])
    with h5py.File(outcome.processed, "r") as f:
        data = f["entry/normalise/normalised"]
        assert data.attrs["signal"] == "norm"
        assert list(data.attrs["axes"]) == ["energy"]
        assert data["energy"].attrs["units"] == "eV"
        energy, norm, flat = data["energy"][()], data["norm"][()], data["flat"][()]
        mu = f["entry/normalise/mu"]
        assert set(mu) >= {"energy", "mu", "pre_edge", "post_edge"}
        pre_line, post_curve = mu["pre_edge"][()], mu["post_edge"][()]
        assert f["entry/normalise"].attrs["default"] == "normalised"
    assert energy.shape == norm.shape == (400,) and np.all(np.diff(energy) > 0)
    pre = (energy >= e0 + float(values["pre1"])) & (energy <= e0 + float(values["pre2"]))
    post = (energy >= e0 + float(values["norm1"])) & (energy <= e0 + float(values["norm2"]))
    assert abs(norm[pre].mean()) < 0.01
    assert np.abs(norm[pre]).max() < 0.05
    # flat ~ 1 above the edge; norm follows the falling post-edge curve (normalised, 1 at E0)
    assert flat[post].mean() == pytest.approx(1.0, abs=0.02)
    post_norm = (post_curve - pre_line) / float(values["edge_step"])
    assert post_norm[np.argmin(np.abs(energy - e0))] == pytest.approx(1.0, abs=1e-3)
    assert abs((norm - post_norm)[post].mean()) < 0.01


def test_values_are_recorded_in_the_lims(xafs_job):
    outcome, db = xafs_job
    (step,) = db.job(outcome.job_id).steps
    assert (step.step_id, step.uses, step.status) == ("normalise", "xafs_normalise", "success")
    info = [m.message for m in step.messages if m.severity == "INFO"]
    values = _results(outcome.processed)
    assert f"e0 = {float(values['e0'])}" in info
    assert f"edge_step = {float(values['edge_step'])}" in info
    assert "edge = Fe K" in info


def test_fluorescence_mode(xafs_scan, xafs_truth, client, lims):
    recipe = find_recipe("xafs-b18")
    outcome = run_job(recipe, xafs_scan.path, {"mode": "fluorescence"}, lims=lims, client=client)
    assert outcome.status == Status.SUCCESS
    values = _results(outcome.processed)
    truth = xafs_truth["fluorescence"]
    assert abs(float(values["e0"]) - truth["e0_eV"]) < E0_TOL_EV
    assert float(values["edge_step"]) == pytest.approx(truth["edge_step"], rel=STEP_TOL)


def _failure(lims: Lims, outcome) -> str:
    assert outcome.status == Status.FAILED
    (step,) = lims.job(outcome.job_id).steps
    assert step.status == "failed"
    assert "\n" not in step.message
    return step.message


def test_missing_dataset_fails_with_its_path(tmp_path, client, lims):
    scan = simulate_xafs(tmp_path, XafsConfig(fluorescence=False))  # no If
    recipe = find_recipe("xafs-b18")
    with pytest.raises(InputError) as e:  # checked before anything is recorded or started
        run_job(recipe, scan.path, {"mode": "fluorescence"}, lims=lims, client=client)
    message = str(e.value)
    assert "i_f: layout diamond found no if dataset in b18-000001.nxs" in message, message
    assert "--param" in message


def test_non_monotonic_energy_fails(xafs_scan, tmp_path, client, lims):
    path = tmp_path / xafs_scan.path.name
    shutil.copy(xafs_scan.path, path)
    with h5py.File(path, "r+") as f:
        energy = f["entry/instrument/energy/value"]
        e = energy[()]
        e[[100, 101]] = e[[101, 100]]  # the monochromator went back one step
        energy[...] = e
    outcome = run_job(find_recipe("xafs-b18"), path, {}, lims=lims, client=client)
    message = _failure(lims, outcome)
    assert "energy is not monotonic" in message, message
    assert f"{e[100]:.2f} eV at point 100 is followed by {e[101]:.2f} eV" in message


def test_xafs_recipe_is_chosen_for_b18_xafs_scans_only(xafs_scan, tmp_path):
    b18 = read_scan_info(xafs_scan.path)
    assert b18.beamline == "b18" and b18.axes == ("energy",) and b18.shape == (400,)
    assert b18.axis_units["energy"] == "eV"
    i18 = read_scan_info(
        simulate_scan(
            tmp_path, SimulationConfig(map_shape=(2, 2), frame_shape=(16, 16), bins=64)
        ).path
    )
    xafs, xrf, xrd = (find_recipe(n) for n in ("xafs-b18", "xrf-map", "xrd-map"))
    assert xafs.applies(b18) == (True, [])
    assert not xrf.applies(b18)[0] and not xrd.applies(b18)[0]
    ok, why = xafs.applies(i18)
    assert not ok and any("beamline 'i18'" in w for w in why)
    assert xrf.applies(i18)[0] and xrd.applies(i18)[0]


# --- the step's checks, without a cluster ----------------------------------------------------


def test_a_scan_down_in_energy_is_turned_round():
    energy, order = monotonic(np.array([3.0, 2.0, 1.0]))
    assert energy.tolist() == [1.0, 2.0, 3.0] and order.tolist() == [2, 1, 0]


def test_too_few_points(tmp_path):
    cfg = XafsConfig(emin=-60, xanes_start=-20, xanes_stop=10, emax=30, pre_step=20)
    cfg.xanes_step, cfg.k_step, cfg.jitter = 10.0, 1.0, 0.0
    scan = read_scan_info(simulate_xafs(tmp_path, cfg).path)
    assert scan.shape[0] < 20
    with pytest.raises(StepError, match=r"only \d+ energy points: .* at least 20"):
        XafsNormalise(XafsParams(), scan).load()


def test_no_edge():
    rng = np.random.default_rng(0)
    energy = np.linspace(6900.0, 7900.0, 300)
    mu = 0.8 - 1e-4 * (energy - 7100.0) + rng.normal(0.0, 0.003, energy.size)
    with pytest.raises(StepError, match="no edge found"):
        normalise(energy, mu, XafsParams(pre1=-150, pre2=-30, norm1=150))


def test_e0_outside_the_scan():
    energy = np.linspace(6900.0, 7900.0, 300)
    with pytest.raises(StepError, match="outside the scan's energies"):
        normalise(energy, np.ones_like(energy), XafsParams(e0=9000.0))
