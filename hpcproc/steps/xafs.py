"""XAFS normalisation of an energy scan: mu(E) from ion-chamber counts, then larch's
``pre_edge`` (E0, pre-edge line, post-edge curve, edge step, normalised and flattened mu).

A task step: a XAFS scan is one small spectrum (hundreds of points), so it runs once the scan
has ended, whole, in :meth:`XafsNormalise.finish`; there is nothing to split. Every way the
input can make the result meaningless (a missing dataset, energies that go back, too few points,
no edge) fails the step with one line saying so, rather than writing a normalisation of noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from hpcproc.errors import StepError
from hpcproc.scaninfo import ScanInfo
from hpcproc.steps.base import (
    ArrayOutput,
    Axis,
    StepContext,
    StepParams,
    StepResult,
    TaskPlan,
    TaskStep,
)

MIN_POINTS = 20  # fewer cannot hold a pre-edge line, an edge and a post-edge curve
MIN_RANGE_POINTS = 3  # points a pre- or post-edge fit range must hold
MIN_EDGE_SNR = 10.0  # edge step / pre-edge noise below which there is no edge to speak of


class XafsParams(StepParams):
    mode: Literal["transmission", "fluorescence", "mu"] = Field(
        default="transmission",
        description="transmission: mu = ln(I0/It); fluorescence: mu = If/I0; mu: as recorded",
    )
    energy: str = Field(default="/entry/instrument/energy/value", description="Energies (eV)")
    i0: str = Field(default="/entry/instrument/ionchambers/I0", description="Incident counts")
    it: str = Field(default="/entry/instrument/ionchambers/It", description="Transmitted counts")
    i_f: str = Field(
        default="/entry/instrument/ionchambers/If", description="Fluorescence counts (If)"
    )
    mu: str | None = Field(default=None, description="mu(E) as recorded (mode mu)")
    e0: float | None = Field(default=None, gt=0, description="Edge energy (eV); None: found")
    pre1: float | None = Field(default=None, lt=0, description="Pre-edge fit start, eV from E0")
    pre2: float | None = Field(default=None, le=0, description="Pre-edge fit end, eV from E0")
    norm1: float | None = Field(default=None, ge=0, description="Post-edge fit start, eV from E0")
    norm2: float | None = Field(default=None, gt=0, description="Post-edge fit end, eV from E0")
    nnorm: int | None = Field(default=None, ge=0, le=3, description="Post-edge polynomial degree")

    @model_validator(mode="after")
    def _ranges(self) -> XafsParams:
        if self.pre1 is not None and self.pre2 is not None and self.pre1 >= self.pre2:
            raise ValueError(f"pre1 ({self.pre1}) must be below pre2 ({self.pre2})")
        if self.norm1 is not None and self.norm2 is not None and self.norm1 >= self.norm2:
            raise ValueError(f"norm1 ({self.norm1}) must be below norm2 ({self.norm2})")
        return self


@dataclass(frozen=True)
class Normalised:
    """What :func:`normalise` found; arrays are on ``energy`` (increasing)."""

    energy: np.ndarray
    mu: np.ndarray
    norm: np.ndarray
    flat: np.ndarray
    pre_edge: np.ndarray
    post_edge: np.ndarray
    values: dict[str, Any]


OUTPUTS: tuple[tuple[str, str, str], ...] = (  # (group, name, long name); signals first
    ("normalised", "norm", "normalised mu(E)"),
    ("normalised", "flat", "flattened normalised mu(E)"),
    ("mu", "mu", "mu(E)"),
    ("mu", "pre_edge", "pre-edge line"),
    ("mu", "post_edge", "post-edge curve"),
)


class XafsNormalise(TaskStep):
    name: ClassVar[str] = "xafs_normalise"
    Params = XafsParams
    description = "XAFS pre-edge subtraction and normalisation (xraylarch pre_edge)"
    inputs = {"energy": "energies (eV)", "i0": "incident counts", "it | i_f": "signal counts"}
    roles = {"energy": "energy", "i0": "i0", "it": "it", "i_f": "if", "mu": "mu"}

    @classmethod
    def input_problems(cls, params: XafsParams, scan: ScanInfo) -> list[str]:
        return [
            why
            for name, path in cls.datasets(params).items()
            if (why := cls.input_problem(name, path, scan)) is not None
        ]

    @staticmethod
    def datasets(p: XafsParams) -> dict[str, str]:
        """The datasets the step reads in its mode, by role."""
        if p.mode == "mu":
            return {"energy": p.energy, "mu": p.mu or "/(no mu dataset)"}
        roles = {"energy": p.energy, "i0": p.i0}
        return roles | ({"it": p.it} if p.mode == "transmission" else {"i_f": p.i_f})

    outputs = {
        "normalised/norm, flat": "normalised and flattened mu(E)",
        "mu/mu, pre_edge, post_edge": "mu(E) with its pre-edge line and post-edge curve",
        "values": "e0, edge_step, edge, pre_slope, pre_offset, pre1, pre2, norm1, norm2, nnorm",
    }

    def __init__(self, params: XafsParams, scan: ScanInfo) -> None:
        super().__init__(params, scan)
        self.params: XafsParams = params

    def plan(self, ctx: StepContext) -> TaskPlan:
        """Everything is checked here, before any output exists: a bad scan fails at once."""
        energy, _mu = self.load()
        axis = Axis("energy", energy, "eV")
        outputs = [
            ArrayOutput(name, energy.shape, group, "float64", "", long_name, (axis,))
            for group, name, long_name in OUTPUTS
        ]
        return TaskPlan(outputs=outputs)

    def finish(self, ctx: StepContext) -> StepResult:
        energy, mu = self.load()
        r = normalise(energy, mu, self.params)
        arrays = {f"{group}/{name}": getattr(r, name) for group, name, _ in OUTPUTS}
        return StepResult(arrays=arrays, values=r.values)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """``(energy, mu)`` from the scan file, energy increasing; StepError saying what is
        wrong with the data otherwise."""
        from hpcproc.formats import read_array

        p = self.params
        roles = self.datasets(p)
        missing = [
            f"{path} (parameter {role})"
            for role, path in roles.items()
            if self.scan.missing_input(path) is not None
        ]
        if missing:
            raise StepError(
                f"{self.scan.path.name} has no dataset {', '.join(missing)}, "
                f"needed in {p.mode} mode"
            )
        data = {
            role: np.asarray(read_array(self.scan, path), dtype=np.float64)
            for role, path in roles.items()
        }
        for role, values in data.items():
            if values.ndim != 1:
                raise StepError(
                    f"{roles[role]} ({role}) is {values.ndim}-D, not one value per point"
                )
        n = data["energy"].size
        for role, values in data.items():
            if values.size != n:
                raise StepError(f"{roles[role]} ({role}) has {values.size} points, energy {n}")
        energy = data["energy"]
        if n < MIN_POINTS:
            raise StepError(f"only {n} energy points: normalisation needs at least {MIN_POINTS}")
        bad = [role for role, v in data.items() if not np.all(np.isfinite(v))]
        if bad:
            raise StepError(f"non-finite values (NaN, inf) in {', '.join(bad)}")
        energy, order = monotonic(energy)
        if p.mode == "mu":
            return energy, data["mu"][order]
        i0 = data["i0"][order]
        if p.mode == "transmission":
            it = data["it"][order]
            if np.any(i0 <= 0) or np.any(it <= 0):
                i = int(np.flatnonzero((i0 <= 0) | (it <= 0))[0])
                raise StepError(
                    f"I0 or It is not positive at {energy[i]:.2f} eV (point {i}): no ln(I0/It)"
                )
            mu = np.log(i0 / it)
        else:
            if np.any(i0 <= 0):
                i = int(np.flatnonzero(i0 <= 0)[0])
                raise StepError(f"I0 is not positive at {energy[i]:.2f} eV (point {i}): no If/I0")
            mu = data["i_f"][order] / i0
        return energy, mu


def monotonic(energy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(energy increasing, index order)``: a scan down in energy (some QEXAFS sweeps) is
    turned round; one that goes back and forth is refused, its spectrum would fold."""
    steps = np.diff(energy)
    if np.all(steps > 0):
        order = np.arange(energy.size)
    elif np.all(steps < 0):
        order = np.arange(energy.size)[::-1]
    else:
        up = int(np.count_nonzero(steps > 0))
        i = int(
            np.flatnonzero(steps <= 0)[0] if up >= steps.size / 2 else np.flatnonzero(steps >= 0)[0]
        )
        raise StepError(
            f"energy is not monotonic: {energy[i]:.2f} eV at point {i} is followed by "
            f"{energy[i + 1]:.2f} eV"
        )
    return energy[order], order


def normalise(energy: np.ndarray, mu: np.ndarray, p: XafsParams) -> Normalised:
    """Run larch's ``pre_edge`` on increasing ``energy`` and check the edge it found is one."""
    from larch import Group
    from larch.xafs import pre_edge

    lo, hi = float(energy[0]), float(energy[-1])
    if p.e0 is not None and not lo < p.e0 < hi:
        raise StepError(f"e0 = {p.e0:g} eV is outside the scan's energies ({lo:.1f}-{hi:.1f} eV)")
    g = Group()
    kws = {k: getattr(p, k) for k in ("e0", "pre1", "pre2", "norm1", "norm2", "nnorm")}
    try:
        pre_edge(energy, mu, group=g, **kws)
    except (ValueError, TypeError, np.linalg.LinAlgError, IndexError) as exc:
        raise StepError(f"larch pre_edge failed: {exc}") from None
    d = g.pre_edge_details
    e0 = float(g.e0)
    ie0 = int(np.argmin(np.abs(energy - e0)))
    pre_line, post_curve = np.asarray(g.pre_edge), np.asarray(g.post_edge)
    step = float(post_curve[ie0] - pre_line[ie0])  # signed: larch reports |step|
    in_pre = (energy >= e0 + d.pre1) & (energy <= e0 + d.pre2)
    in_post = (energy >= e0 + d.norm1) & (energy <= e0 + d.norm2)
    for what, mask, r1, r2 in (
        ("pre-edge", in_pre, d.pre1, d.pre2),
        ("post-edge", in_post, d.norm1, d.norm2),
    ):
        if np.count_nonzero(mask) < MIN_RANGE_POINTS:
            raise StepError(
                f"no edge found: the {what} range E0{r1:+g}..E0{r2:+g} eV (E0 = {e0:.1f} eV) "
                f"holds {np.count_nonzero(mask)} points of {lo:.1f}-{hi:.1f} eV; "
                "is the edge inside the scan? (set e0, pre1, pre2, norm1, norm2)"
            )
    noise = float(np.std(mu[in_pre] - pre_line[in_pre]))
    if not np.isfinite(step) or step <= MIN_EDGE_SNR * noise or step <= 0:
        raise StepError(
            f"no edge found: edge step {step:.3g} at E0 = {e0:.1f} eV is not above "
            f"{MIN_EDGE_SNR:g} x the pre-edge noise ({noise:.2g})"
        )
    edge = f"{g.atsym} {g.edge}" if getattr(g, "atsym", None) else ""
    values = {
        "e0": round(e0, 2),
        "edge_step": float(f"{step:.5g}"),
        "edge": edge,
        "pre_slope": float(f"{d.pre_slope:.5g}"),
        "pre_offset": float(f"{d.pre_offset:.6g}"),
        "pre1": round(float(d.pre1), 2),
        "pre2": round(float(d.pre2), 2),
        "norm1": round(float(d.norm1), 2),
        "norm2": round(float(d.norm2), 2),
        "nnorm": int(d.nnorm),
        "mode": p.mode,
    }
    # larch divides by |step|, the same here: the step is positive
    return Normalised(
        energy, mu, np.asarray(g.norm), np.asarray(g.flat), pre_line, post_curve, values
    )
