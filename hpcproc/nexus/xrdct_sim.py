"""XRD-CT scan simulator: a rotation x translation scan of a three-phase phantom, with truth.

``simulate_xrdct(out_dir, XrdCtConfig(...))`` writes the same files and NeXus layout as
:func:`hpcproc.nexus.simulator.simulate_scan` (Excalibur frames, PONI file, ``diamond_scan``
with unique keys and ``scan_finished``, truth JSON), so ``xrd_integrate`` reads it unchanged.
The scan is ``stage_theta`` (slow, 0 to 180°, endpoint excluded) x ``stage_x`` (fast): the
usual XRD-CT raster of a pencil beam.

Physics (exact, noise-free in the truth file): the phantom is a few ellipses of three phases
(a CeO2-like matrix with bcc-Fe-like and anatase-like inclusions), each phase with its own
ring pattern. The frame at (theta, x) is the air-scatter background plus, for each phase, its
ring image times the phase's line integral along the beam (the beam is one translation step
wide: the analytic chord length of each ellipse averaged over that width), then Poisson noise.
Analytic projections, rather than a discrete Radon transform of the truth grid, keep the
reconstruction honest (no "inverse crime").

Geometry and conventions (what the truth means):

* Translation column ``j`` sees the ray at ``s = j - c`` pixels from the rotation axis, where
  ``c`` (``truth["xrdct"]["centre_of_rotation_px"]``) is deliberately not the middle column.
* At angle theta a point at (x right, y up) of the sample, in pixels from the axis, lies on
  the ray ``s = x cos(theta) + y sin(theta)`` (skimage's ``radon`` convention).
* The truth maps are images of ``size x size`` pixels (``size`` odd), the centre pixel on the
  axis: pixel (row ``i``, column ``j``) is at x = j - m, y = m - i with m = (size - 1) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcproc.nexus.simulator import (
    RING_PEAK_COUNTS,
    ScanModel,
    SimulatedScan,
    SimulationConfig,
    _compress,
    _field,
    _iso,
    _nx_group,
    ordered_map,
    scan_paths,
    write_layout,
    write_point,
)

__all__ = ["PHASES", "XrdCtConfig", "simulate_xrdct"]

AIR_MARGIN = 3.0  # pixels between the sample's outermost point and the scanned range's edges
SUPERSAMPLE = 8  # sub-pixels per pixel side for the truth maps' area fractions

# Phase 1 is the CeO2 pattern of the map simulator; 2 and 3 are (d in Å, relative intensity).
PHASES: tuple[dict[str, Any], ...] = (
    {"name": "CeO2-like (fcc, a = 5.4113 Å)", "reflections": None},
    {
        "name": "bcc-Fe-like (a = 2.8665 Å)",
        "reflections": ((2.0269, 100.0), (1.4333, 20.0), (1.1703, 30.0), (1.0135, 10.0)),
    },
    {
        "name": "anatase-like",
        "reflections": (
            (3.520, 100.0),
            (2.378, 20.0),
            (1.892, 35.0),
            (1.700, 20.0),
            (1.667, 20.0),
            (1.480, 14.0),
        ),
    },
)

# Ellipses: (phase, x0, y0, a, b, angle deg), in units of the sample radius. The first is the
# matrix; the others lie inside it and replace it where they are (the matrix's density is 1
# minus theirs), so every point holds at most one phase.
ELLIPSES: tuple[tuple[int, float, float, float, float, float], ...] = (
    (1, -0.05, 0.00, 0.92, 0.76, 15.0),
    (2, 0.38, 0.15, 0.30, 0.17, -35.0),
    (2, -0.45, -0.28, 0.17, 0.17, 0.0),
    (3, -0.22, 0.40, 0.20, 0.14, 60.0),
    (3, 0.18, -0.42, 0.22, 0.12, 10.0),
)


@dataclass
class XrdCtConfig(SimulationConfig):
    """An XRD-CT scan: ``n_theta`` angles over 180° x ``n_x`` translations of ``x_step_mm``.

    ``centre_offset_px`` puts the rotation axis that far from the middle of the translation
    range; ``counts_per_px`` is the strongest ring's peak counts per pixel of path, in units of
    the map simulator's ring (400 counts at phase intensity 1). ``map_shape`` follows from
    ``(n_theta, n_x)``.
    """

    n_theta: int = 60
    n_x: int = 48
    x_step_mm: float = 0.05
    centre_offset_px: float = 2.75
    counts_per_px: float = 0.1
    frame_shape: tuple[int, int] = (128, 128)
    xrf: bool = False
    beamline: str = "i15-1"
    map_shape: tuple[int, int] = field(default=(0, 0), init=False)

    def __post_init__(self) -> None:
        if self.xrf or not self.xrd:
            raise ValueError("an XRD-CT scan has XRD frames only (xrd=True, xrf=False)")
        if self.n_theta < 2 or self.n_x < 16:
            raise ValueError(f"need n_theta >= 2 and n_x >= 16, got {self.n_theta}, {self.n_x}")
        if self.x_step_mm <= 0 or self.counts_per_px <= 0:
            raise ValueError("x_step_mm and counts_per_px must be > 0")
        self.map_shape = (int(self.n_theta), int(self.n_x))
        super().__post_init__()
        if self.radius_px < 4:
            raise ValueError(
                f"centre_offset_px {self.centre_offset_px} leaves no room for the sample "
                f"in {self.n_x} translations"
            )

    @property
    def centre_px(self) -> float:
        """Rotation axis, in translation columns (0 = first)."""
        return (self.n_x - 1) / 2.0 + self.centre_offset_px

    @property
    def radius_px(self) -> float:
        """Radius of the sample: it stays inside the scanned range, air on both sides."""
        c = self.centre_px
        return min(c, self.n_x - 1 - c) - AIR_MARGIN

    @property
    def grid_size(self) -> int:
        """Side of the truth maps: the largest odd number of pixels <= n_x."""
        return self.n_x if self.n_x % 2 else self.n_x - 1

    @property
    def angles_deg(self) -> np.ndarray:
        return np.arange(self.n_theta) * (180.0 / self.n_theta)

    @property
    def x_mm(self) -> np.ndarray:
        return (np.arange(self.n_x) - (self.n_x - 1) / 2.0) * self.x_step_mm


# --- phantom --------------------------------------------------------------------------------
def _ellipses_px(cfg: XrdCtConfig) -> list[tuple[int, float, float, float, float, float]]:
    r = cfg.radius_px
    return [(p, x0 * r, y0 * r, a * r, b * r, ang) for p, x0, y0, a, b, ang in ELLIPSES]


def _inside(x: np.ndarray, y: np.ndarray, e: tuple) -> np.ndarray:
    _p, x0, y0, a, b, ang = e
    c, s = math.cos(math.radians(ang)), math.sin(math.radians(ang))
    u = (x - x0) * c + (y - y0) * s
    v = -(x - x0) * s + (y - y0) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def phase_maps(cfg: XrdCtConfig) -> np.ndarray:
    """(3, size, size) density of each phase: the area fraction of each pixel it fills."""
    n, k = cfg.grid_size, SUPERSAMPLE
    m = (n - 1) / 2.0
    sub = (np.arange(n * k) + 0.5) / k - 0.5  # sub-pixel centres, in pixel index units
    x = (sub - m)[None, :]
    y = (m - sub)[:, None]
    fine = np.zeros((len(PHASES), n * k, n * k))
    for e in _ellipses_px(cfg):
        inside = _inside(x, y, e)
        fine[e[0] - 1] += inside
        if e[0] != 1:
            fine[0] -= inside
    return fine.reshape(len(PHASES), n, k, n, k).mean(axis=(2, 4))


def _chord_integral(u: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Antiderivative of sqrt(r^2 - u^2), with u clipped to [-r, r]."""
    u = np.clip(u, -r, r)
    return 0.5 * (u * np.sqrt(np.maximum(r * r - u * u, 0.0)) + r * r * np.arcsin(u / r))


def projections(cfg: XrdCtConfig) -> np.ndarray:
    """(3, n_theta, n_x) line integral (pixels of path) of each phase's density, for a beam
    one translation step wide (chord length averaged over the step)."""
    theta = np.radians(cfg.angles_deg)[:, None]
    s = (np.arange(cfg.n_x) - cfg.centre_px)[None, :]
    out = np.zeros((len(PHASES), cfg.n_theta, cfg.n_x))
    for e in _ellipses_px(cfg):
        p, x0, y0, a, b, ang = e
        alpha = theta - math.radians(ang)
        r = np.sqrt((a * np.cos(alpha)) ** 2 + (b * np.sin(alpha)) ** 2)
        s0 = x0 * np.cos(theta) + y0 * np.sin(theta)
        area = _chord_integral(s + 0.5 - s0, r) - _chord_integral(s - 0.5 - s0, r)
        chord = 2.0 * a * b / (r * r) * area  # mean chord over the beam width (1 px)
        out[p - 1] += chord
        if p != 1:
            out[0] -= chord
    return np.maximum(out, 0.0)  # rounding below zero where an inclusion fills the matrix


def _ring_list(reflections: tuple[tuple[float, float], ...], wavelength_a: float) -> list[dict]:
    top = max(i for _, i in reflections)
    rings = []
    for d, inten in reflections:
        s = wavelength_a / (2.0 * d)
        if s >= 1.0:
            continue
        rings.append(
            {
                "d_spacing_A": d,
                "two_theta_deg": math.degrees(2.0 * math.asin(s)),
                "q_nm^-1": 2.0 * math.pi / (d / 10.0),
                "q_A^-1": 2.0 * math.pi / d,
                "relative_intensity": inten / top,
            }
        )
    return rings


def _ring_image(tth: np.ndarray, rings: list[dict], sigma: float) -> np.ndarray:
    """Gaussian rings in 2θ, the strongest RING_PEAK_COUNTS high, as the map simulator's."""
    img = np.zeros(tth.shape, np.float32)
    for r in rings:
        x = (tth - np.float32(r["two_theta_deg"])) / np.float32(sigma)
        near = np.abs(x) < 8.0
        peak = np.float32(RING_PEAK_COUNTS * r["relative_intensity"])
        img[near] += peak * np.exp(np.float32(-0.5) * x[near] ** 2)
    return img


class XrdCtModel:
    """Phantom, projections and ring images, built once; :meth:`point_chunks` is
    deterministic in (config, point), like :class:`ScanModel`'s."""

    def __init__(self, cfg: XrdCtConfig, scan_file_name: str) -> None:
        self.cfg = cfg
        self.base = base = ScanModel(cfg, scan_file_name)  # geometry, CeO2 rings, background
        tth = np.asarray(base.ai.center_array(cfg.frame_shape, unit="2th_deg"), np.float32)
        sigma = base.truth["ring_sigma_deg"]
        wavelength_a = base.truth["wavelength_A"]
        rings = [base.truth["rings"]]
        images = [base.ring_img]
        for phase in PHASES[1:]:
            listed = _ring_list(phase["reflections"], wavelength_a)
            rings.append([r for r in listed if r["two_theta_deg"] < tth.max() + 5 * sigma])
            images.append(_ring_image(tth, rings[-1], sigma))
        self.rings = np.stack(images)  # (3, H, W)
        self.proj = projections(cfg)  # (3, n_theta, n_x)
        self.flat_proj = self.proj.reshape(len(PHASES), -1).T.astype(np.float32)  # (N, 3)
        maps = phase_maps(cfg)
        labels = np.where(maps.sum(axis=0) >= 0.5, np.argmax(maps, axis=0) + 1, 0)

        truth = base.truth
        truth.pop("phase_intensity", None)  # the map simulator's CeO2 map: not this scan's
        truth["scan"].update(
            shape=[cfg.n_theta, cfg.n_x],
            axes=["stage_theta", "stage_x"],
            step_mm=cfg.x_step_mm,
            stage_theta_deg=cfg.angles_deg.tolist(),
            stage_x_mm=cfg.x_mm.tolist(),
        )
        truth["xrdct"] = {
            "centre_of_rotation_px": cfg.centre_px,
            "centre_of_rotation_mm": float(np.interp(cfg.centre_px, np.arange(cfg.n_x), cfg.x_mm)),
            "angles_deg": cfg.angles_deg.tolist(),
            "sample_radius_px": cfg.radius_px,
            "counts_per_px": cfg.counts_per_px,
            "grid": {
                "size": cfg.grid_size,
                "convention": "pixel (i, j) at x = j - m, y = m - i pixels from the rotation "
                "axis, m = (size - 1) / 2; ray at angle theta: s = x cos(theta) + y sin(theta)",
            },
            "phases": [
                {"label": k + 1, "name": p["name"], "rings": rings[k]} for k, p in enumerate(PHASES)
            ],
            "ellipses": [
                dict(zip(("phase", "x0_px", "y0_px", "a_px", "b_px", "angle_deg"), e, strict=True))
                for e in _ellipses_px(cfg)
            ],
            "labels": labels.tolist(),
            "phase_maps": np.round(maps, 6).tolist(),
        }
        self.truth = truth

    def make_point(self, i: int) -> np.ndarray:
        """Frame (H, W) uint16 of point ``i`` (theta index ``i // n_x``, x index ``i % n_x``)."""
        cfg = self.cfg
        lam = np.tensordot(self.flat_proj[i] * np.float32(cfg.counts_per_px), self.rings, 1)
        lam += self.base.bg_img
        frame = np.random.default_rng([cfg.seed, 3, i]).poisson(lam)
        frame = np.minimum(frame, 65535).astype(np.uint16)
        return np.ascontiguousarray(frame[::-1]) if cfg.flip_ud else frame

    def point_chunks(self, i: int) -> tuple[bytes, None]:
        return _compress(self.make_point(i)), None


def _replace(group: h5py.Group, name: str, value: Any, units: str | None = None) -> None:
    if name in group:
        del group[name]
    _field(group, name, value, units)


def simulate_xrdct(out_dir: Path | str, config: XrdCtConfig | None = None) -> SimulatedScan:
    """Write an XRD-CT scan (+ PONI + truth JSON) into ``out_dir``."""
    cfg = config if config is not None else XrdCtConfig()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path, poni_path, truth_path = scan_paths(out_dir, cfg)
    assert poni_path is not None  # xrd is always on
    n = cfg.n_points
    model = XrdCtModel(cfg, path.name)
    model.base.write_poni(poni_path)
    thetas = np.repeat(cfg.angles_deg, cfg.n_x)
    xs = np.tile(cfg.x_mm, cfg.n_theta)
    start = datetime.now(UTC).astimezone()
    with h5py.File(path, "w", libver="latest") as f:
        dsets = write_layout(f, model.base, path, start, n)
        entry = f["entry"]
        # The map layout, with this scan's own axes, title and command.
        sample = entry["sample"]
        for name in ("x", "y"):
            del sample[name]
        _field(sample, "stage_theta", np.round(thetas, 9), "deg")
        _field(sample, "stage_x", np.round(xs, 9), "mm")
        _replace(sample, "name", "simulated XRD-CT phantom: CeO2-like, bcc-Fe-like, anatase-like")
        _replace(entry, "title", f"Simulated XRD-CT {cfg.n_theta} angles x {cfg.n_x} translations")
        _replace(
            entry,
            "scan_command",
            f"scan stage_theta 0 {cfg.angles_deg[-1]:.6g} {180.0 / cfg.n_theta:.6g} "
            f"stage_x {xs[0]:.6g} {xs[-1]:.6g} {cfg.x_step_mm:g} excalibur",
        )
        for i, chunks in enumerate(ordered_map(model.point_chunks, range(n))):
            write_point(dsets, i, chunks)
        ds = _nx_group(entry, "diamond_scan", "NXcollection")
        _field(ds, "scan_shape", np.array([cfg.n_theta, cfg.n_x], dtype=np.int64))
        ds.create_dataset(
            "scan_axes", data=["stage_theta", "stage_x"], dtype=h5py.string_dtype("utf-8")
        )
        _field(ds, "scan_finished", np.int32(1 if cfg.finished else 0))
        keys = _nx_group(ds, "keys", "NXcollection")
        _field(keys, "uniqueKeys", np.arange(1, n + 1, dtype=np.int32))
        if cfg.finished:
            end = max(datetime.now(UTC).astimezone(), start + timedelta(milliseconds=1))
            _field(entry, "end_time", _iso(end))
    model.base.truth = model.truth
    model.base.write_truth(truth_path)
    return SimulatedScan(path=path, poni=poni_path, truth=truth_path, config=cfg)
