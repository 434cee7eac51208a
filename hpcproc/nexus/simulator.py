"""Scan simulator: an I18-like NeXus map scan with XRD frames, XRF spectra and exact ground truth.

``simulate_scan(out_dir, SimulationConfig(...))`` writes three files side by side::

    <beamline>-<number:06d>.nxs         the scan (Excalibur frames + Xspress3 spectra, Blosc LZ4)
    <beamline>-<number:06d>.poni        pyFAI geometry of the frames (only with ``xrd=True``)
    <beamline>-<number:06d>.truth.json  everything the data were made from (rings, maps, lines)

Frames and spectra are compressed here with python-blosc (blosc1 framing, the only framing the HDF5
Blosc filter 32001 reads) and stored with ``write_direct_chunk``; the datasets are declared with
``hdf5plugin.Blosc`` so any h5py + hdf5plugin user reads them with ordinary slicing.

The pieces are shared with the live SWMR writer (:mod:`hpcproc.nexus.live_writer`):
:class:`ScanModel` (physics, truth, ``make_point(i)``, compressed ``point_chunks(i)``),
:func:`write_layout` (the NeXus tree and detector datasets), :func:`write_scan_group`
(``diamond_scan``) and :func:`write_point` (direct-chunk store of one point).

Physics, kept simple but exact (the truth file is the model, noise-free):

* XRD: CeO2-like fcc rings (a = 5.4113 Å) at 17 keV on an Excalibur-3M-sized detector 0.15 m away,
  PONI at 20 % of each dimension; Gaussian rings in 2θ on a smooth background, scaled per point by
  a phase-intensity map, Poisson noise. ``flip_ud`` writes frames upside down relative to the PONI.
* XRF: each element's K lines (xraydb) as Gaussians of 150 eV FWHM, integrated over each bin with
  the channel's own calibration, weighted by a per-element spatial pattern; elastic peak at the
  incident energy; smooth background; Poisson noise.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import blosc
import h5py
import hdf5plugin
import numpy as np

__all__ = [
    "CEO2_A",
    "ScanModel",
    "SimulatedScan",
    "SimulationConfig",
    "scan_paths",
    "simulate_scan",
    "write_layout",
    "write_point",
    "write_scan_group",
]

# --- constants -------------------------------------------------------------------------------
HC_KEV_A = 12.398419843320026  # h*c in keV*Å
EXCALIBUR_SHAPE = (2069, 1796)  # rows (slow, pyFAI dim1), columns (fast, dim2)
EXCALIBUR_PIXEL = 55e-6  # m
DISTANCE = 0.15  # m
PONI_FRACTION = 0.2  # PONI at 20 % of each detector dimension
CEO2_A = 5.4113  # Å, fcc
# (hkl, relative intensity): CeO2 powder pattern, rounded (strongest = 100)
CEO2_REFLECTIONS: tuple[tuple[tuple[int, int, int], float], ...] = (
    ((1, 1, 1), 100.0),
    ((2, 0, 0), 29.0),
    ((2, 2, 0), 51.0),
    ((3, 1, 1), 42.0),
    ((2, 2, 2), 8.0),
    ((4, 0, 0), 8.0),
    ((3, 3, 1), 15.0),
    ((4, 2, 0), 12.0),
)
RING_SIGMA_DEG = 0.05  # intrinsic ring width (sigma, degrees of 2θ)
RING_PEAK_COUNTS = 400.0  # peak counts of the strongest ring at phase intensity 1
XRD_BACKGROUND = (15.0, 40.0, 8.0)  # a + b * exp(-2θ / c°): smooth air/sample scatter

XRF_NOMINAL_RANGE_EV = 40960.0  # bins * gain: 4096 bins x 10 eV; gain scales for other bin counts
XRF_FWHM_EV = 150.0
XRF_ELEMENT_COUNTS = 6000.0  # total K-line counts per channel per point at pattern value 1
XRF_ELASTIC_COUNTS = 3000.0  # total elastic counts per channel per point
XRF_BACKGROUND = 0.6  # counts per 10 eV at low energy, decaying
STEP_MM = 0.1  # raster step of the sample stages

COMPRESSION = {"cname": "lz4", "clevel": 5}


@dataclass
class SimulationConfig:
    map_shape: tuple[int, int] = (12, 16)  # (ny, nx): y slow, x fast
    frame_shape: tuple[int, int] = (256, 256)  # (H, W); (2069, 1796) = real Excalibur 3M
    xrd: bool = True
    xrf: bool = True
    channels: int = 8
    bins: int = 4096
    elements: tuple[str, ...] = ("Fe", "Co", "Ni", "Cu", "Zn")
    energy_kev: float = 17.0
    beamline: str = "i18"
    visit: str = "cm12345-1"
    scan_number: int = 1
    seed: int = 0
    flip_ud: bool = False
    finished: bool = True

    def __post_init__(self) -> None:
        self.map_shape = tuple(int(v) for v in self.map_shape)  # type: ignore[assignment]
        self.frame_shape = tuple(int(v) for v in self.frame_shape)  # type: ignore[assignment]
        self.elements = tuple(self.elements)
        if len(self.map_shape) != 2 or min(self.map_shape) < 1:
            raise ValueError(f"map_shape must be (ny, nx) >= 1, got {self.map_shape}")
        if len(self.frame_shape) != 2 or min(self.frame_shape) < 8:
            raise ValueError(f"frame_shape must be (H, W) >= 8, got {self.frame_shape}")
        if not (self.xrd or self.xrf):
            raise ValueError("nothing to simulate: xrd and xrf are both False")
        if self.xrf and (self.channels < 1 or self.bins < 16):
            raise ValueError("xrf needs channels >= 1 and bins >= 16")
        if self.energy_kev <= 0:
            raise ValueError("energy_kev must be > 0")

    @property
    def stem(self) -> str:
        return f"{self.beamline}-{self.scan_number:06d}"

    @property
    def n_points(self) -> int:
        return self.map_shape[0] * self.map_shape[1]


@dataclass(frozen=True)
class SimulatedScan:
    path: Path  # the .nxs scan file
    poni: Path | None  # pyFAI PONI of the frames (None without XRD)
    truth: Path  # ground truth JSON
    config: SimulationConfig


# --- XRD model ---------------------------------------------------------------------------------
def _geometry(cfg: SimulationConfig) -> dict[str, Any]:
    h, w = cfg.frame_shape
    pixel1 = EXCALIBUR_SHAPE[0] * EXCALIBUR_PIXEL / h  # keep the physical size of the detector
    pixel2 = EXCALIBUR_SHAPE[1] * EXCALIBUR_PIXEL / w
    wavelength_a = HC_KEV_A / cfg.energy_kev
    return {
        "distance_m": DISTANCE,
        "poni1_m": PONI_FRACTION * h * pixel1,
        "poni2_m": PONI_FRACTION * w * pixel2,
        "rot1": 0.0,
        "rot2": 0.0,
        "rot3": 0.0,
        "pixel1_m": pixel1,
        "pixel2_m": pixel2,
        "frame_shape": [h, w],
        "wavelength_m": wavelength_a * 1e-10,
    }


def _integrator(geom: dict[str, Any]):
    from pyFAI.detectors import Detector

    try:
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    except ImportError:  # older pyFAI
        from pyFAI.azimuthalIntegrator import AzimuthalIntegrator

    det = Detector(
        pixel1=geom["pixel1_m"], pixel2=geom["pixel2_m"], max_shape=tuple(geom["frame_shape"])
    )
    return AzimuthalIntegrator(
        dist=geom["distance_m"],
        poni1=geom["poni1_m"],
        poni2=geom["poni2_m"],
        rot1=0.0,
        rot2=0.0,
        rot3=0.0,
        detector=det,
        wavelength=geom["wavelength_m"],
    )


def _rings(wavelength_a: float, max_two_theta_deg: float) -> list[dict[str, Any]]:
    top = max(i for _, i in CEO2_REFLECTIONS)
    rings = []
    for hkl, inten in CEO2_REFLECTIONS:
        d = CEO2_A / math.sqrt(sum(v * v for v in hkl))
        s = wavelength_a / (2.0 * d)
        if s >= 1.0:
            continue
        tth = math.degrees(2.0 * math.asin(s))
        if tth > max_two_theta_deg:
            continue
        rings.append(
            {
                "hkl": list(hkl),
                "d_spacing_A": d,
                "two_theta_deg": tth,
                "q_nm^-1": 2.0 * math.pi / (d / 10.0),
                "q_A^-1": 2.0 * math.pi / d,
                "relative_intensity": inten / top,
            }
        )
    return rings


def _xrd_templates(
    cfg: SimulationConfig, geom: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], float, Any]:
    """Noise-free ring image (phase intensity 1) and background image, both float32 (H, W)."""
    ai = _integrator(geom)
    # 2θ of each pixel centre (what the deprecated ``ai.twoThetaArray()`` gives, in degrees)
    tth = np.asarray(ai.center_array(cfg.frame_shape, unit="2th_deg"), dtype=np.float32)
    pixel_deg = math.degrees(0.5 * (geom["pixel1_m"] + geom["pixel2_m"]) / geom["distance_m"])
    sigma = RING_SIGMA_DEG + 0.5 * pixel_deg
    rings = _rings(geom["wavelength_m"] * 1e10, float(tth.max()) + 5 * sigma)
    ring_img = np.zeros(cfg.frame_shape, np.float32)
    for r in rings:
        x = (tth - np.float32(r["two_theta_deg"])) * np.float32(1.0 / sigma)
        near = np.abs(x) < 8.0  # vectorised, only where the ring has weight
        ring_img[near] += np.float32(RING_PEAK_COUNTS * r["relative_intensity"]) * np.exp(
            np.float32(-0.5) * x[near] ** 2
        )
    a, b, c = XRD_BACKGROUND
    bg_img = (a + b * np.exp(-tth / np.float32(c))).astype(np.float32)
    return ring_img, bg_img, rings, sigma, ai


# --- spatial patterns ------------------------------------------------------------------------
def _pattern_variants(shape: tuple[int, int]) -> list[list[np.ndarray]]:
    """Candidate maps per pattern kind: blob, horizontal gradient, stripes, ring, checkerboard."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    yn = y / max(ny - 1, 1)
    xn = x / max(nx - 1, 1)
    xi, yi = x.astype(int), y.astype(int)
    blobs = [
        np.exp(-(((yn - by) / 0.3) ** 2 + ((xn - bx) / 0.3) ** 2))
        for by, bx in ((0.3, 0.5), (0.7, 0.6), (0.25, 0.3), (0.75, 0.4))
    ]
    gradients = [xn]
    stripes = [((xi + ph) // w % 2).astype(float) for w in (1, 2) for ph in (0, 1)]
    rings = [
        np.exp(-(((np.hypot(yn - cy, xn - cx) - r) / 0.12) ** 2))
        for cy, cx in ((0.5, 0.5), (0.5, 0.4), (0.4, 0.6))
        for r in (0.3, 0.4)
    ]
    checkers = [
        (((yi + py) // 2 + (xi + px) // 2) % 2).astype(float) for py in (0, 1) for px in (0, 1)
    ]
    return [blobs, gradients, stripes, rings, checkers]


def _patterns(n: int, shape: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` distinct maps (values 0..1) over (ny, nx), as weakly correlated as the grid allows.

    The first five are a Gaussian blob, a horizontal gradient, vertical stripes, a ring and a
    checkerboard of 2x2 blocks; of a few placements of each, the set with the smallest largest
    pairwise |correlation| is taken (small grids make symmetric patterns alias). Further elements
    get random smooth-ish fields.
    """
    kinds = _pattern_variants(shape)[:n]
    flat = [v.ravel() for kind in kinds for v in kind]
    m = np.array(flat)
    sd = m.std(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.abs(np.corrcoef(m)) if m.shape[1] > 1 else np.ones((len(flat),) * 2)
    corr = np.where(np.isfinite(corr), corr, 1.0)
    corr[sd == 0, :] = 1.0  # a constant map is never a good choice
    starts = np.cumsum([0] + [len(kind) for kind in kinds])
    best, best_score = None, np.inf
    for combo in itertools.product(*(range(starts[k], starts[k + 1]) for k in range(len(kinds)))):
        idx = np.array(combo)
        sub = corr[np.ix_(idx, idx)]
        score = float((sub - np.eye(len(idx)) * sub).max()) if len(idx) > 1 else 0.0
        if score < best_score:
            best, best_score = idx, score
    chosen = [m[i].reshape(shape) for i in best] if best is not None else []
    out: list[np.ndarray] = []
    for k in range(n):
        if k < len(chosen):
            p = chosen[k]
        else:  # more elements than named patterns: random smooth-ish fields
            p = rng.random(shape)
            p = (p + np.roll(p, 1, 0) + np.roll(p, 1, 1)) / 3.0
        p = p - p.min()
        top = p.max()
        out.append(p / top if top > 0 else np.full(shape, 0.5))
    return out


def _phase_map(shape: tuple[int, int]) -> np.ndarray:
    """Per-point intensity of the diffracting phase: a smooth diagonal ramp 0.4..1."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    t = (y / max(ny - 1, 1) + (1.0 - x / max(nx - 1, 1))) / 2.0
    return 0.4 + 0.6 * t


# --- XRF model ---------------------------------------------------------------------------------
def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf  # scipy comes with pyFAI

    return erf(x)


def _gauss_binned(edges: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """Fraction of a unit Gaussian in each bin; ``edges`` (C, B+1) eV -> (C, B)."""
    cdf = 0.5 * (1.0 + _erf((edges - centre) / (sigma * math.sqrt(2.0))))
    return np.diff(cdf, axis=-1)


def _xrf_model(cfg: SimulationConfig, rng: np.random.Generator) -> dict[str, Any]:
    import xraydb

    c, b = cfg.channels, cfg.bins
    nominal_gain = XRF_NOMINAL_RANGE_EV / b
    gain = nominal_gain * (1.0 + 0.003 * rng.uniform(-1.0, 1.0, c))
    offset = rng.uniform(-20.0, 20.0, c)
    edges = offset[:, None] + gain[:, None] * (np.arange(b + 1)[None, :] - 0.5)
    centres = offset[:, None] + gain[:, None] * np.arange(b)[None, :]
    sigma = XRF_FWHM_EV / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    incident_ev = cfg.energy_kev * 1000.0

    elements: dict[str, dict[str, Any]] = {}
    templates = np.zeros((len(cfg.elements), c, b))
    patterns = _patterns(len(cfg.elements), cfg.map_shape, rng)
    for k, el in enumerate(cfg.elements):
        lines = xraydb.xray_lines(el, "K")
        edge = xraydb.xray_edge(el, "K").energy
        excited = edge < incident_ev
        total = sum(ln.intensity for ln in lines.values()) or 1.0
        if excited:
            for ln in lines.values():
                templates[k] += (ln.intensity / total) * _gauss_binned(edges, ln.energy, sigma)
            templates[k] *= XRF_ELEMENT_COUNTS
        elements[el] = {
            "pattern": patterns[k].tolist(),
            "lines": {name: ln.energy for name, ln in lines.items()},
            "line_intensities": {name: ln.intensity / total for name, ln in lines.items()},
            "k_edge_eV": edge,
            "excited": bool(excited),
        }
    elastic = XRF_ELASTIC_COUNTS * _gauss_binned(edges, incident_ev, sigma)
    background = (
        XRF_BACKGROUND
        * (gain[:, None] / 10.0)
        * (np.exp(-np.clip(centres, 0, None) / 4000.0) + 0.2)
        * (centres < incident_ev + 3 * sigma)
    )
    return {
        "gain": gain,
        "offset": offset,
        "templates": templates,
        "fixed": elastic + background,
        "patterns": patterns,
        "elements": elements,
        "sigma_eV": sigma,
    }


# --- the scan model: physics + truth, shared by the offline and the live writer ---------------
class ScanModel:
    """Everything a scan is made from, built once; :meth:`make_point` is deterministic.

    ``make_point(i)`` depends only on the configuration (seed included) and ``i``, so any writer
    (offline :func:`simulate_scan`, the live SWMR writer) produces the same point ``i`` for the
    same configuration, in any order and on any thread.
    """

    def __init__(self, cfg: SimulationConfig, scan_file_name: str) -> None:
        self.cfg = cfg
        ny, nx = cfg.map_shape
        rng = np.random.default_rng(cfg.seed)
        self.geom = geom = _geometry(cfg)
        wavelength_a = geom["wavelength_m"] * 1e10
        truth: dict[str, Any] = {
            "scan": {
                "file": scan_file_name,
                "shape": [ny, nx],
                "axes": ["y", "x"],
                "step_mm": STEP_MM,
            },
            "seed": cfg.seed,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "energy_keV": cfg.energy_kev,
            "wavelength_m": geom["wavelength_m"],
            "wavelength_A": wavelength_a,
            "flip_ud": cfg.flip_ud,
        }
        self.ring_img: np.ndarray | None = None
        self.bg_img: np.ndarray | None = None
        self.ai: Any = None
        phase = _phase_map(cfg.map_shape)
        if cfg.xrd:
            self.ring_img, self.bg_img, rings, sigma_deg, self.ai = _xrd_templates(cfg, geom)
            truth["geometry"] = {k: v for k, v in geom.items() if k != "wavelength_m"}
            truth["geometry"]["detector"] = (
                "Excalibur 3M physical size, pixels scaled to frame_shape"
            )
            truth["rings"] = rings
            truth["ring_sigma_deg"] = sigma_deg
            truth["ring_peak_counts"] = RING_PEAK_COUNTS
            truth["xrd_background"] = "a + b*exp(-2theta_deg/c), (a, b, c) = " + str(XRD_BACKGROUND)
            truth["phase_intensity"] = phase.tolist()
        self.xrf: dict[str, Any] | None = _xrf_model(cfg, rng) if cfg.xrf else None
        self.conc: np.ndarray | None = None
        if self.xrf is not None:
            truth["xrf"] = {
                "channels": cfg.channels,
                "bins": cfg.bins,
                "energy_offset_eV": self.xrf["offset"].tolist(),
                "energy_gain_eV": self.xrf["gain"].tolist(),
                "fwhm_eV": XRF_FWHM_EV,
                "elastic_eV": cfg.energy_kev * 1000.0,
                "elements": self.xrf["elements"],
            }
            self.conc = np.stack([p.ravel() for p in self.xrf["patterns"]], axis=1)  # (N, n_el)
        self.phase_flat = phase.ravel()
        self.truth = truth

    def make_point(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(frame (H, W) uint16 | None, spectrum (C, B) uint32 | None)`` of point ``i``."""
        cfg = self.cfg
        frame = spectrum = None
        if self.ring_img is not None:
            r = np.random.default_rng([cfg.seed, 1, i])
            lam = self.ring_img * np.float32(self.phase_flat[i])
            lam += self.bg_img
            frame = r.poisson(lam).astype(np.uint16)  # counts << 65535
            if cfg.flip_ud:
                frame = np.ascontiguousarray(frame[::-1])
        if self.xrf is not None:
            r = np.random.default_rng([cfg.seed, 2, i])
            lam = np.tensordot(self.conc[i], self.xrf["templates"], axes=1) + self.xrf["fixed"]
            spectrum = r.poisson(lam).astype(np.uint32)
        return frame, spectrum

    def point_chunks(self, i: int) -> tuple[bytes | None, bytes | None]:
        """Point ``i`` as the compressed chunks stored by ``write_direct_chunk`` (blosc1)."""
        frame, spectrum = self.make_point(i)
        return (
            _compress(frame) if frame is not None else None,
            _compress(spectrum) if spectrum is not None else None,
        )

    def write_poni(self, path: Path) -> None:
        from pyFAI.io.ponifile import PoniFile

        with open(path, "w") as fd:
            PoniFile(self.ai).write(fd)

    def write_truth(self, path: Path) -> None:
        with open(path, "w") as fd:
            json.dump(self.truth, fd, indent=1)


def ordered_map(fn: Callable[[int], Any], indices: range, workers: int | None = None):
    """``fn(i)`` for each index, yielded in order, computed on a small thread pool.

    numpy's Poisson sampling releases the GIL; the look-ahead is bounded (2 x workers).
    """
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        it = iter(indices)
        for i in it:
            pending.append(pool.submit(fn, i))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


# --- writing -----------------------------------------------------------------------------------
def _blosc_kwargs() -> dict[str, Any]:
    return dict(**hdf5plugin.Blosc(shuffle=hdf5plugin.Blosc.BITSHUFFLE, **COMPRESSION))


def _compress(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    return blosc.compress_ptr(
        arr.__array_interface__["data"][0],
        arr.size,
        typesize=arr.dtype.itemsize,
        shuffle=blosc.BITSHUFFLE,
        **COMPRESSION,
    )


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    g = parent.create_group(name)
    g.attrs["NX_class"] = nx_class
    return g


def _field(g: h5py.Group, name: str, value: Any, units: str | None = None) -> h5py.Dataset:
    d = g.create_dataset(name, data=value)
    if units is not None:
        d.attrs["units"] = units
    return d


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def scan_paths(out_dir: Path | str, cfg: SimulationConfig) -> tuple[Path, Path | None, Path]:
    """``(scan .nxs, PONI or None, truth JSON)`` paths of a scan in ``out_dir``."""
    out = Path(out_dir)
    return (
        out / f"{cfg.stem}.nxs",
        out / f"{cfg.stem}.poni" if cfg.xrd else None,
        out / f"{cfg.stem}.truth.json",
    )


def write_layout(
    f: h5py.File, model: ScanModel, path: Path, start: datetime, n_frames: int
) -> dict[str, h5py.Dataset]:
    """Write the scan's NeXus tree except ``diamond_scan`` and ``end_time``.

    Detector datasets (one frame per chunk, Blosc filter declared, resizable along the points
    axis) are created with ``n_frames`` points: the scan's total offline, 0 for a live writer.
    Returns them by detector name ("excalibur", "xspress3").
    """
    cfg = model.cfg
    geom = model.geom
    ny, nx = cfg.map_shape
    h, w = cfg.frame_shape
    ys = np.repeat(np.round(np.arange(ny) * STEP_MM, 9), nx)
    xs = np.tile(np.round(np.arange(nx) * STEP_MM, 9), ny)
    detectors = (["excalibur"] if cfg.xrd else []) + (["xspress3"] if cfg.xrf else [])
    scan_command = (
        f"mapscan y 0 {(ny - 1) * STEP_MM:.6g} {STEP_MM:g} x 0 {(nx - 1) * STEP_MM:.6g} "
        f"{STEP_MM:g} " + " ".join(detectors)
    )

    f.attrs["NX_class"] = "NXroot"
    f.attrs["default"] = "entry"
    f.attrs["creator"] = "hpcproc simulator"
    f.attrs["file_name"] = str(path.absolute())
    f.attrs["file_time"] = _iso(start)
    f.attrs["HDF5_Version"] = h5py.version.hdf5_version
    f.attrs["h5py_version"] = h5py.version.version
    entry = _nx_group(f, "entry", "NXentry")
    entry.attrs["default"] = detectors[0]
    _field(entry, "title", f"Simulated map {ny}x{nx} ({', '.join(detectors)})")
    _field(entry, "scan_command", scan_command)
    _field(entry, "start_time", _iso(start))
    _field(entry, "experiment_identifier", cfg.visit)
    _field(entry, "entry_identifier", str(cfg.scan_number))
    _field(entry, "program_name", "hpcproc simulator")

    inst = _nx_group(entry, "instrument", "NXinstrument")
    _field(inst, "name", cfg.beamline)
    beam = _nx_group(inst, "beam", "NXbeam")
    _field(beam, "incident_energy", cfg.energy_kev, "keV")
    _field(beam, "incident_wavelength", geom["wavelength_m"] * 1e10, "angstrom")

    sample = _nx_group(entry, "sample", "NXsample")
    _field(sample, "name", "simulated CeO2 + Fe/Co/Ni/Cu/Zn map")
    _field(sample, "y", ys, "mm")
    _field(sample, "x", xs, "mm")

    dsets: dict[str, h5py.Dataset] = {}
    if cfg.xrd:
        det = _nx_group(inst, "excalibur", "NXdetector")
        dsets["excalibur"] = det.create_dataset(
            "data",
            shape=(n_frames, h, w),
            maxshape=(None, h, w),
            dtype=np.uint16,
            chunks=(1, h, w),
            **_blosc_kwargs(),
        )
        _field(det, "x_pixel_size", geom["pixel2_m"], "m")
        _field(det, "y_pixel_size", geom["pixel1_m"], "m")
        _field(det, "distance", geom["distance_m"], "m")
        _field(det, "beam_center_x", geom["poni2_m"] / geom["pixel2_m"], "pixel")
        _field(det, "beam_center_y", geom["poni1_m"] / geom["pixel1_m"], "pixel")
        _field(det, "description", "Excalibur 3M (simulated)")
    if cfg.xrf:
        xrf = model.xrf
        det = _nx_group(inst, "xspress3", "NXdetector")
        dsets["xspress3"] = det.create_dataset(
            "data",
            shape=(n_frames, cfg.channels, cfg.bins),
            maxshape=(None, cfg.channels, cfg.bins),
            dtype=np.uint32,
            chunks=(1, cfg.channels, cfg.bins),
            **_blosc_kwargs(),
        )
        _field(det, "energy_offset", xrf["offset"], "eV")
        _field(det, "energy_gain", xrf["gain"], "eV")
        _field(det, "description", "Xspress3 (simulated)")
    for name, d in dsets.items():
        nxdata = _nx_group(entry, name, "NXdata")
        nxdata.attrs["signal"] = "data"
        nxdata["data"] = d  # hard link
    return dsets


def write_scan_group(entry: h5py.Group, cfg: SimulationConfig) -> h5py.Group:
    """``entry/diamond_scan`` with scan_shape and scan_axes (what both writers share)."""
    ny, nx = cfg.map_shape
    ds = _nx_group(entry, "diamond_scan", "NXcollection")
    _field(ds, "scan_shape", np.array([ny, nx], dtype=np.int64))
    ds.create_dataset("scan_axes", data=["y", "x"], dtype=h5py.string_dtype("utf-8"))
    return ds


def write_point(dsets: dict[str, h5py.Dataset], i: int, chunks: tuple[Any, Any]) -> None:
    """Store point ``i``'s compressed chunks ``(frame, spectrum)`` (None: no such detector)."""
    frame, spectrum = chunks
    if frame is not None:
        dsets["excalibur"].id.write_direct_chunk((i, 0, 0), frame)
    if spectrum is not None:
        dsets["xspress3"].id.write_direct_chunk((i, 0, 0), spectrum)


def simulate_scan(
    out_dir: Path | str,
    config: SimulationConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimulatedScan:
    """Write a simulated scan (+ PONI + truth) into ``out_dir``; ``progress(done, total)``."""
    cfg = config if config is not None else SimulationConfig()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path, poni_path, truth_path = scan_paths(out_dir, cfg)
    n = cfg.n_points

    model = ScanModel(cfg, path.name)
    if poni_path is not None:
        model.write_poni(poni_path)

    start = datetime.now(UTC).astimezone()
    with h5py.File(path, "w", libver="latest") as f:
        dsets = write_layout(f, model, path, start, n)
        entry = f["entry"]
        # points generated (and compressed) on a small thread pool, stored here in order
        for i, chunks in enumerate(ordered_map(model.point_chunks, range(n))):
            write_point(dsets, i, chunks)
            if progress is not None:
                progress(i + 1, n)

        ds = write_scan_group(entry, cfg)
        _field(ds, "scan_finished", np.int32(1 if cfg.finished else 0))
        keys = _nx_group(ds, "keys", "NXcollection")
        _field(keys, "uniqueKeys", np.arange(1, n + 1, dtype=np.int32))
        if cfg.finished:
            end = max(datetime.now(UTC).astimezone(), start + timedelta(milliseconds=1))
            _field(entry, "end_time", _iso(end))

    model.write_truth(truth_path)
    return SimulatedScan(path=path, poni=poni_path, truth=truth_path, config=cfg)
