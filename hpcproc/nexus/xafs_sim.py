"""Scan simulator: a B18-like transmission XAFS energy scan with exact ground truth.

``simulate_xafs(out_dir, XafsConfig(...))`` writes two files side by side::

    <beamline>-<number:06d>.nxs         the scan: one point per energy, ion-chamber counts
    <beamline>-<number:06d>.truth.json  what mu(E) was made from (E0, edge step, pre-edge line)

NeXus layout (as a GDA step scan on B18 writes it; the names the ``xafs_normalise`` step and the
``xafs-b18`` recipe default to)::

    /entry                               NXentry, @default = "ionchambers"
      instrument/name                    "b18"
      instrument/energy/value            NXpositioner: monochromator energy readback (eV)
      instrument/energy/value_set        its demand values (eV)
      instrument/ionchambers/I0          NXdetector: incident-beam ion chamber counts
      instrument/ionchambers/It          transmitted-beam ion chamber counts (after the sample)
      instrument/ionchambers/Iref        counts after a reference foil (energy calibration)
      instrument/ionchambers/If          fluorescence counts (only with ``fluorescence=True``)
      instrument/ionchambers/count_time  counting time of each point (s)
      monitor/data                       NXmonitor: I0 again (hard link), the NeXus normaliser
      sample/name                        NXsample
      ionchambers                        NXdata: It (signal), I0, Iref, [If] against energy
      diamond_scan                       scan_shape [n], scan_axes ["energy"], scan_finished,
                                         keys/uniqueKeys, as :mod:`hpcproc.nexus.simulator`

Model, noise-free in the truth file (``mu`` there is the expectation of ln(I0/It))::

    mu(E) = a + b*E + step * J(E) * (E0/E)**p * (1 + chi(k))

* ``a + b*E``: the pre-edge line (what larch's ``pre_edge`` fits below the edge);
* ``J``: an error-function edge of width ``edge_width`` (sigma, eV) centred on E0, so that
  the maximum of dmu/dE (larch's E0) is E0; an arctan's slow tails would bend the pre-edge;
* ``(E0/E)**p``: the fall of the atomic absorption above the edge (p ~ 2.5); ``step`` is the
  difference of the smooth post-edge and pre-edge curves at E0, i.e. the edge step;
* ``chi(k)``: three bcc-Fe-like shells, damped (Debye-Waller), switched on smoothly from k = 0.

I0 = Poisson(flux(E) * count_time), It = Poisson(<I0> * exp(-mu)), Iref after a foil with the
same edge, If = Poisson(<I0> * efficiency * (background + edge part of mu)).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcproc.nexus.simulator import SimulatedScan, _field, _iso, _nx_group

__all__ = ["ETOK", "XafsConfig", "energy_grid", "mu_model", "simulate_xafs"]

ETOK = 0.2624682917  # 2m/hbar^2 in eV^-1 Angstrom^-2: k^2 = ETOK * (E - E0)

# Dataset paths written (and the defaults the xafs_normalise step reads).
ENERGY = "/entry/instrument/energy/value"
I0 = "/entry/instrument/ionchambers/I0"
IT = "/entry/instrument/ionchambers/It"
IREF = "/entry/instrument/ionchambers/Iref"
IF = "/entry/instrument/ionchambers/If"

# bcc-Fe-like shells: (N, R in Angstrom, sigma^2 in Angstrom^2, phase at k = 0)
SHELLS: tuple[tuple[float, float, float, float], ...] = (
    (8.0, 2.48, 0.0050, -1.2),
    (6.0, 2.87, 0.0060, -1.2),
    (12.0, 4.05, 0.0080, -1.4),
)
S02 = 0.8
BACKSCATTER = 0.35  # constant stand-in for |f(k)|


@dataclass
class XafsConfig:
    element: str = "Fe"
    edge: str = "K"
    e0: float | None = None  # eV; None: xraydb's edge energy (Fe K: 7112 eV)
    edge_step: float = 1.0  # jump of mu at E0
    pre_at_e0: float = 0.8  # pre-edge line at E0
    pre_slope: float = -2.0e-4  # pre-edge line slope, per eV
    post_exponent: float = 2.5  # (E0/E)**p fall of the absorption above the edge
    edge_width: float = 1.5  # eV, sigma of the erf edge (core hole + monochromator)
    exafs: float = 1.0  # scale of chi(k); 0 for a bare edge
    emin: float = -200.0  # eV relative to E0
    emax: float = 800.0
    pre_step: float = 5.0  # eV, below xanes_start
    xanes_start: float = -30.0
    xanes_stop: float = 40.0
    xanes_step: float = 0.5  # eV
    k_step: float = 0.05  # Angstrom^-1, above xanes_stop
    jitter: float = 0.02  # eV, readback - demand scatter of the monochromator
    flux: float = 1.0e6  # I0 counts per second at E0
    count_time: float = 1.0  # s per point below the EXAFS region ...
    count_time_max: float = 3.0  # ... rising linearly in k to this at the last point
    fluorescence: bool = False  # also write If
    fluo_efficiency: float = 0.02  # If / I0 per unit of mu's edge part
    fluo_background: float = 0.1  # scatter into the fluorescence detector, in mu units
    ref_step: float = 1.5  # edge step of the reference foil
    ref_pre: float = 0.4  # its pre-edge absorption
    beamline: str = "b18"
    visit: str = "sp12345-1"
    scan_number: int = 1
    sample: str = "Fe foil (simulated)"
    seed: int = 0
    finished: bool = True

    def __post_init__(self) -> None:
        if not self.emin < self.xanes_start < self.xanes_stop < self.emax:
            raise ValueError("need emin < xanes_start < xanes_stop < emax (eV from E0)")
        if min(self.pre_step, self.xanes_step, self.k_step) <= 0:
            raise ValueError("energy and k steps must be > 0")
        if self.xanes_stop <= 0 or self.jitter >= self.xanes_step / 4:
            raise ValueError("xanes_stop must be > 0 and jitter < xanes_step / 4")
        if self.flux <= 0 or self.count_time <= 0 or self.count_time_max < self.count_time:
            raise ValueError("flux, count_time must be > 0 and count_time_max >= count_time")

    @property
    def stem(self) -> str:
        return f"{self.beamline}-{self.scan_number:06d}"

    def edge_energy(self) -> float:
        if self.e0 is not None:
            return float(self.e0)
        import xraydb

        return float(xraydb.xray_edge(self.element, self.edge).energy)


def energy_grid(cfg: XafsConfig, e0: float) -> np.ndarray:
    """Demand energies (eV) of a B18-style region scan: coarse pre-edge, fine XANES, steps of
    constant k above, so that the EXAFS is sampled evenly where it is analysed (in k)."""
    pre = np.arange(cfg.emin, cfg.xanes_start - 1e-9, cfg.pre_step)
    xanes = np.arange(cfg.xanes_start, cfg.xanes_stop - 1e-9, cfg.xanes_step)
    k = np.arange(math.sqrt(ETOK * cfg.xanes_stop), math.sqrt(ETOK * cfg.emax) + 1e-9, cfg.k_step)
    return e0 + np.concatenate([pre, xanes, k**2 / ETOK])


def chi(k: np.ndarray) -> np.ndarray:
    """EXAFS-like chi(k): damped sines of the shells, switched on smoothly from k = 0."""
    k = np.asarray(k, dtype=float)
    ks = np.maximum(k, 1e-6)
    out = np.zeros_like(ks)
    for n, r, s2, phase in SHELLS:
        amp = n * S02 * BACKSCATTER / (ks * r**2) * np.exp(-2.0 * s2 * ks**2)
        out += amp * np.sin(2.0 * ks * r + phase - 0.1 * ks)
    return out * (1.0 - np.exp(-((ks / 2.0) ** 2)))


def edge_part(energy: np.ndarray, cfg: XafsConfig, e0: float, step: float) -> np.ndarray:
    """``step * J(E) * (E0/E)**p * (1 + chi)``: the edge and what follows it."""
    from scipy.special import erf

    de = energy - e0
    jump = 0.5 * (1.0 + erf(de / (math.sqrt(2.0) * cfg.edge_width)))
    k = np.sqrt(ETOK * np.clip(de, 0.0, None))
    return step * jump * (e0 / energy) ** cfg.post_exponent * (1.0 + cfg.exafs * chi(k))


def mu_model(energy: np.ndarray, cfg: XafsConfig, e0: float) -> np.ndarray:
    """The sample's noise-free mu(E) = ln(<I0>/<It>)."""
    pre = cfg.pre_at_e0 + cfg.pre_slope * (energy - e0)
    return pre + edge_part(energy, cfg, e0, cfg.edge_step)


def _count_time(cfg: XafsConfig, energy: np.ndarray, e0: float) -> np.ndarray:
    """B18-style k-weighted counting: longer at high k, where chi is small."""
    k = np.sqrt(ETOK * np.clip(energy - e0, 0.0, None))
    k1, k2 = math.sqrt(ETOK * cfg.xanes_stop), math.sqrt(ETOK * cfg.emax)
    frac = np.clip((k - k1) / max(k2 - k1, 1e-9), 0.0, 1.0)
    return cfg.count_time + (cfg.count_time_max - cfg.count_time) * frac


def simulate_xafs(out_dir: Path | str, cfg: XafsConfig | None = None) -> SimulatedScan:
    """Write a simulated B18 XAFS scan and its truth JSON into ``out_dir``."""
    cfg = cfg if cfg is not None else XafsConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, truth_path = out / f"{cfg.stem}.nxs", out / f"{cfg.stem}.truth.json"
    rng = np.random.default_rng(cfg.seed)
    e0 = cfg.edge_energy()

    demand = energy_grid(cfg, e0)
    energy = demand + rng.normal(0.0, cfg.jitter, demand.size)  # readback: the true energy
    n = energy.size
    mu = mu_model(energy, cfg, e0)
    count_time = _count_time(cfg, energy, e0)
    flux = cfg.flux * (1.0 - 0.25 * (energy - e0) / 1000.0)  # the mono's slowly falling output
    i0_mean = flux * count_time
    it_mean = i0_mean * np.exp(-mu)
    mu_ref = cfg.ref_pre + edge_part(energy, cfg, e0, cfg.ref_step)
    iref_mean = it_mean * np.exp(-mu_ref)
    counts = {
        "I0": rng.poisson(i0_mean).astype(np.float64),
        "It": rng.poisson(it_mean).astype(np.float64),
        "Iref": rng.poisson(iref_mean).astype(np.float64),
    }
    fluo = None
    if cfg.fluorescence:
        fluo = cfg.fluo_efficiency * (cfg.fluo_background + edge_part(energy, cfg, e0, 1.0))
        counts["If"] = rng.poisson(i0_mean * fluo).astype(np.float64)

    end = datetime.now(UTC).astimezone()
    start = end - timedelta(seconds=float(count_time.sum()))  # the scan as if it just ended
    with h5py.File(path, "w", libver="latest") as f:
        _write(f, cfg, path, (start, end), demand, energy, count_time, counts, e0)

    pre_offset = cfg.pre_at_e0 - cfg.pre_slope * e0
    truth: dict[str, Any] = {
        "scan": {"file": path.name, "shape": [n], "axes": ["energy"]},
        "seed": cfg.seed,
        "config": asdict(cfg),
        "element": cfg.element,
        "edge": cfg.edge,
        "e0_eV": e0,
        "edge_step": cfg.edge_step,
        # larch's convention: pre_edge(E) = pre_offset + pre_slope * E (E in eV)
        "pre_edge": {"slope": cfg.pre_slope, "intercept": pre_offset, "at_e0": cfg.pre_at_e0},
        "post_edge": {"model": "pre_edge(E) + edge_step * (E0/E)**p", "p": cfg.post_exponent},
        "edge_width_eV": cfg.edge_width,
        "exafs_shells": [
            {"N": s[0], "R_A": s[1], "sigma2_A2": s[2], "phase0": s[3]} for s in SHELLS
        ],
        "datasets": {"energy": ENERGY, "I0": I0, "It": IT, "Iref": IREF}
        | ({"If": IF} if cfg.fluorescence else {}),
        "reference": {"e0_eV": e0, "edge_step": cfg.ref_step, "pre_edge": cfg.ref_pre},
        "energy_eV": energy.tolist(),
        "mu": mu.tolist(),
    }
    if fluo is not None:
        # If/I0 = efficiency * (background + edge part): flat pre-edge, step = efficiency * 1
        truth["fluorescence"] = {
            "e0_eV": e0,
            "edge_step": cfg.fluo_efficiency,
            "pre_edge": {"slope": 0.0, "intercept": cfg.fluo_efficiency * cfg.fluo_background},
        }
    truth_path.write_text(json.dumps(truth, indent=1))
    return SimulatedScan(path=path, poni=None, truth=truth_path, config=cfg)  # type: ignore[arg-type]


def _write(
    f: h5py.File,
    cfg: XafsConfig,
    path: Path,
    times: tuple[datetime, datetime],
    demand: np.ndarray,
    energy: np.ndarray,
    count_time: np.ndarray,
    counts: dict[str, np.ndarray],
    e0: float,
) -> None:
    n = energy.size
    start, end = times
    f.attrs["NX_class"] = "NXroot"
    f.attrs["default"] = "entry"
    f.attrs["creator"] = "hpcproc xafs simulator"
    f.attrs["file_name"] = str(path.absolute())
    f.attrs["file_time"] = _iso(start)
    entry = _nx_group(f, "entry", "NXentry")
    entry.attrs["default"] = "ionchambers"
    mode = "transmission + fluorescence" if cfg.fluorescence else "transmission"
    _field(entry, "title", f"{cfg.sample}: {cfg.element} {cfg.edge} edge XAFS, {mode}")
    _field(
        entry,
        "scan_command",
        f"xas sample_parameters.xml {cfg.element}_{cfg.edge}_xas_parameters.xml "
        f"detector_parameters.xml output_parameters.xml {cfg.element.lower()}_foil 1",
    )
    _field(entry, "start_time", _iso(start))
    _field(entry, "experiment_identifier", cfg.visit)
    _field(entry, "entry_identifier", str(cfg.scan_number))
    _field(entry, "program_name", "hpcproc xafs simulator")

    inst = _nx_group(entry, "instrument", "NXinstrument")
    _field(inst, "name", cfg.beamline)
    mono = _nx_group(inst, "energy", "NXpositioner")
    _field(mono, "name", "energy")
    _field(mono, "value", energy, "eV")
    _field(mono, "value_set", demand, "eV")
    chambers = _nx_group(inst, "ionchambers", "NXdetector")
    _field(chambers, "description", "ion chambers: I0 before, It after the sample, Iref after")
    for name, values in counts.items():
        _field(chambers, name, values, "counts")
    _field(chambers, "count_time", count_time, "s")
    edge = _nx_group(inst, "edge", "NXcollection")
    _field(edge, "element", cfg.element)
    _field(edge, "edge", cfg.edge)
    _field(edge, "edge_energy", e0, "eV")

    monitor = _nx_group(entry, "monitor", "NXmonitor")
    _field(monitor, "mode", "timer")
    monitor["data"] = chambers["I0"]  # hard link
    monitor["count_time"] = chambers["count_time"]

    sample = _nx_group(entry, "sample", "NXsample")
    _field(sample, "name", cfg.sample)

    data = _nx_group(entry, "ionchambers", "NXdata")
    data.attrs["signal"] = "It"
    data.attrs["auxiliary_signals"] = [k for k in counts if k != "It"]
    data.attrs["axes"] = ["energy"]
    data.attrs["energy_indices"] = np.int32(0)
    data["energy"] = mono["value"]
    for name in counts:
        data[name] = chambers[name]

    ds = _nx_group(entry, "diamond_scan", "NXcollection")
    _field(ds, "scan_shape", np.array([n], dtype=np.int64))
    ds.create_dataset("scan_axes", data=["energy"], dtype=h5py.string_dtype("utf-8"))
    _field(ds, "scan_finished", np.int32(1 if cfg.finished else 0))
    keys = _nx_group(ds, "keys", "NXcollection")
    _field(keys, "uniqueKeys", np.arange(1, n + 1, dtype=np.int32))
    if cfg.finished:
        _field(entry, "end_time", _iso(end))
