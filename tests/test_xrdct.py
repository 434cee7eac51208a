"""XRD-CT end to end: simulated rotation x translation scan -> xrd-ct recipe on a LocalCluster ->
centre, volume and phase map checked against the simulator's truth; failures keep the rest."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from skimage.transform import radon
from sklearn.metrics import adjusted_rand_score

from hpcproc.formats import read_scan_info
from hpcproc.jobs import run_job
from hpcproc.lims import Lims
from hpcproc.nexus.xrdct_sim import XrdCtConfig, phase_maps, projections, simulate_xrdct
from hpcproc.recipes import find_recipe, load_recipe_text
from hpcproc.status import Status
from hpcproc.steps.cluster_patterns import cluster
from hpcproc.steps.tomo_reconstruct import available_backends, reconstruct

# 48 angles x 40 translations, 96 x 96 frames, 150 q bins: ~3 s to simulate, ~10 s to process.
# The axis is 2.3 columns left of the middle (17.2): not on the 0.25-column search grid.
CONFIG = dict(n_theta=48, n_x=40, frame_shape=(96, 96), centre_offset_px=-2.3, seed=5)
NPT = 150


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    return simulate_xrdct(tmp_path_factory.mktemp("xrdct"), XrdCtConfig(**CONFIG))


@pytest.fixture(scope="module")
def truth(scan) -> dict:
    return json.loads(scan.truth.read_text())["xrdct"]


@pytest.fixture(scope="module")
def job(scan, client, tmp_path_factory):
    db = Lims(f"sqlite:///{tmp_path_factory.mktemp('lims') / 'lims.sqlite'}")
    outcome = run_job(find_recipe("xrd-ct"), scan.path, {"npt": NPT}, lims=db, client=client)
    yield outcome, db
    db.close()


def test_simulated_scan_is_an_xrdct_scan(scan, truth):
    info = read_scan_info(scan.path)
    assert info.axes == ("stage_theta", "stage_x") and info.shape == (48, 40)
    assert info.finished and info.beamline == "i15-1"
    assert np.allclose(info.axis_values["stage_theta"], np.arange(48) * 3.75)
    assert find_recipe("xrd-ct").applies(info) == (True, [])
    assert truth["centre_of_rotation_px"] == pytest.approx(17.2)
    labels = np.array(truth["labels"])
    assert labels.shape == (39, 39) and set(np.unique(labels)) == {0, 1, 2, 3}


def test_projections_follow_skimage_radon_convention():
    """The analytic line integrals are skimage's radon of the truth maps, put at the axis."""
    cfg = XrdCtConfig(**CONFIG)
    maps, proj = phase_maps(cfg), projections(cfg)
    m = (cfg.grid_size - 1) // 2
    s = np.arange(cfg.n_x) - cfg.centre_px
    for p in range(3):
        r = radon(maps[p], cfg.angles_deg, circle=True)
        expected = np.stack([np.interp(m + s, np.arange(cfg.grid_size), col) for col in r.T])
        assert np.corrcoef(expected.ravel(), proj[p].ravel())[0, 1] > 0.99
        # a mirror image (the other sense of rotation) does not fit
        mirrored = radon(maps[p][::-1], cfg.angles_deg, circle=True)
        wrong = np.stack([np.interp(m + s, np.arange(cfg.grid_size), col) for col in mirrored.T])
        assert np.abs(wrong - proj[p]).max() > 3 * np.abs(expected - proj[p]).max()


def _disc_sinogram(n_theta: int, n_x: int, centre: float, x0: float, y0: float, r: float):
    theta = np.radians(np.arange(n_theta) * 180.0 / n_theta)[:, None]
    s = (np.arange(n_x) - centre)[None, :] - (x0 * np.cos(theta) + y0 * np.sin(theta))
    return 2.0 * np.sqrt(np.clip(r * r - s * s, 0, None))  # chord of a unit-density disc


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize(("n_x", "centre"), [(48, 26.25), (47, 21.6), (48, 23.5), (40, 16.9)])
def test_backends_share_the_centre_convention(backend, n_x, centre):
    """A disc at (x, y) = (6, 3) px from the axis comes back there, at density 1, whatever the
    centre's fraction and the width's parity."""
    sino = _disc_sinogram(120, n_x, centre, 6.0, 3.0, 4.0)
    rec = reconstruct(sino, np.arange(120) * 1.5, centre, backend=backend)
    n = rec.shape[0]
    assert n % 2 == 1
    m = (n - 1) / 2
    yy, xx = np.mgrid[:n, :n]
    w = rec * (rec > 0.5)
    assert (w * (xx - m)).sum() / w.sum() == pytest.approx(6.0, abs=0.05)
    assert (w * (m - yy)).sum() / w.sum() == pytest.approx(3.0, abs=0.05)
    assert rec[np.hypot(xx - m - 6, m - yy - 3) < 3].mean() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("method", ["nmf", "kmeans"])
def test_cluster_separates_phases_of_different_strength(method):
    """Three phases whose patterns differ 5-fold in strength, on noise: found, labelled 1..3 by
    the position of their strongest peak, each voxel's fraction ~1 where it is pure, ~0 in
    the empty voxels."""
    rng = np.random.default_rng(0)
    q = np.arange(80)
    peaks = ([50, 20], [10, 65], [30, 70])  # strongest first: label order 2, 3, 1
    shape = np.array([1.0, 0.5])  # the second peak of each phase is half the first
    patterns = np.stack(
        [(shape * np.exp(-0.5 * ((q[:, None] - np.array(p)) / 2.0) ** 2)).sum(1) for p in peaks]
    )
    patterns *= np.array([1.0, 5.0, 2.0])[:, None]
    truth = np.zeros((30, 30), int)
    truth[3:14, 3:27], truth[16:27, 3:14], truth[16:27, 16:27] = 1, 2, 3
    volume = np.zeros((80, 30, 30))
    for k in range(3):
        volume += patterns[k][:, None, None] * (truth == k + 1)
    volume += rng.normal(0, 0.1, volume.shape)
    labels, fractions, found = cluster(volume, 3, method)
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) > 0.99
    assert [int(np.argmax(f)) for f in found] == [10, 30, 50]  # ordered by strongest peak
    for label, phase in ((1, 2), (2, 3), (3, 1)):
        inside = truth == phase
        assert np.mean(labels[inside] == label) > 0.99
        # "full" is the 90th percentile of a phase's amounts: the median of a pure, noisy
        # region is a little below (measured 0.94 for the weakest phase here)
        assert np.median(fractions[label - 1][inside]) == pytest.approx(1.0, abs=0.1)
        assert np.abs(fractions[label - 1][truth == 0]).max() < 0.2


def test_job_succeeds_and_files_every_step(job):
    outcome, db = job
    assert outcome.steps == {
        s: Status.SUCCESS for s in ("integrate", "sinogram", "find_centre", "reconstruct", "phases")
    }
    with h5py.File(outcome.processed, "r") as f:
        sino = f["entry/sinogram/sinogram"]
        assert sino["I"].shape == (NPT, 48, 40)
        assert list(sino.attrs["axes"]) == ["q", "theta", "x"]
        np.testing.assert_allclose(sino["theta"][()], np.arange(48) * 3.75)
        rec = f["entry/reconstruct/reconstruction"]
        assert rec["I"].shape == (NPT, 39, 39)
        assert list(rec.attrs["axes"]) == ["q", "y", "x"]
        assert not np.isnan(rec["I"][()]).any(), "every part was written"
        assert f["entry/phases/phases/label"].dtype == np.int32
    messages = [m for s in db.job(outcome.job_id).steps for m in s.messages]
    assert any(m.message.startswith("centre_of_rotation = ") for m in messages), messages


def test_centre_found_within_a_quarter_pixel(job, truth):
    outcome, _ = job
    with h5py.File(outcome.processed, "r") as f:
        results = f["entry/find_centre/results"]
        found = float(results["centre_of_rotation"][()])
        assert results["method"][()].decode() == "vo"
        used = float(f["entry/reconstruct/results/centre_of_rotation"][()])
    # measured: 17.25 against 17.2 (Vo's search steps 0.25 column)
    assert abs(found - truth["centre_of_rotation_px"]) <= 0.25
    assert used == found


def test_phases_recovered(job, truth, scan):
    """Measured: adjusted Rand index 0.99; RMSE of the phase fractions 0.02 (inclusions) and
    0.04 (matrix, whose edges are longest), truth fractions 0..1; no scale fitted."""
    outcome, _ = job
    with h5py.File(outcome.processed, "r") as f:
        labels = f["entry/phases/phases/label"][()]
        fractions = f["entry/phases/fraction/fraction"][()]
        patterns = f["entry/phases/patterns/I"][()]
        q = f["entry/phases/patterns/q"][()]
    true_labels, true_maps = np.array(truth["labels"]), np.array(truth["phase_maps"])
    ari = adjusted_rand_score(true_labels.ravel(), labels.ravel())
    assert ari > 0.9, ari
    overlap = np.array([[(fr * t).sum() for t in true_maps] for fr in fractions])
    rows, cols = linear_sum_assignment(-overlap)
    for comp, phase in zip(rows, cols, strict=True):
        rmse = float(np.sqrt(np.mean((fractions[comp] - true_maps[phase]) ** 2)))
        assert rmse < 0.08, (phase + 1, rmse)
        # the component's strongest peak is one of its phase's rings
        rings = [r["q_nm^-1"] for r in truth["phases"][phase]["rings"]]
        peak = q[np.argmax(patterns[comp])]
        assert min(abs(peak - r) for r in rings) < 2 * (q[1] - q[0]), (phase + 1, peak)


BROKEN = """
name: xrd-ct-broken
steps:
  - id: integrate
    uses: xrd_integrate
    with: {poni: "{scan.dir}/{scan.stem}.poni", npt: 100}
  - id: sinogram
    uses: sinogram
    phase: downstream
    needs: [integrate]
  - id: lost
    uses: sinogram
    phase: downstream
    needs: [integrate]
    with: {source: /entry/integrate/integrated/missing}
  - id: centre
    uses: find_centre
    phase: downstream
    needs: [sinogram]
    with: {centre: 55.5}
  - id: reconstruct
    uses: tomo_reconstruct
    phase: downstream
    needs: [sinogram, centre]
  - id: given
    uses: tomo_reconstruct
    phase: downstream
    needs: [sinogram]
    with: {centre: -3}
"""


def test_failures_are_explained_and_keep_other_results(scan, client, lims):
    recipe = load_recipe_text(BROKEN, "xrd-ct-broken.yaml")
    outcome = run_job(recipe, scan.path, {}, lims=lims, client=client)
    assert outcome.steps == {
        "integrate": Status.SUCCESS,
        "sinogram": Status.SUCCESS,
        "lost": Status.FAILED,
        "centre": Status.FAILED,
        "reconstruct": Status.SKIPPED,
        "given": Status.FAILED,
    }
    assert outcome.status == Status.FAILED
    steps = {s.step_id: s for s in lims.job(outcome.job_id).steps}
    assert "input dataset /entry/integrate/integrated/missing not found" in steps["lost"].message
    assert "/entry/integrate/integrated/I" in steps["lost"].message  # what there is instead
    assert steps["centre"].message == (
        "given centre of rotation 55.5 is outside the sinogram: columns 0 to 39"
    )
    assert "centre of rotation -3 (given) is outside the sinogram" in steps["given"].message
    with h5py.File(outcome.processed, "r") as f:
        assert f["entry/integrate/status"][()] == b"success"
        integrated = f["entry/integrate/integrated/I"][()]
        assert integrated.shape == (48, 40, 100) and not np.isnan(integrated).any()
        assert f["entry/sinogram/sinogram/I"].shape == (100, 48, 40)
        assert f["entry/centre/status"][()] == b"failed"
        assert b"outside the sinogram" in f["entry/centre/message"][()]
        assert "results" not in f["entry/centre"]
        assert f["entry/reconstruct/status"][()] == b"skipped"
