"""Centre of rotation of an XRD-CT scan, from its sinograms (or given), recorded for the rest.

Vo's method (algotom ``find_center_vo``) on the sinograms of the strongest diffraction peaks:
each peak is a sinogram of its own phase, so several independent estimates come for free and
their median shrugs off a peak too weak or too textured to give one. A given centre is checked
against the sinogram's width, so a typo fails here, not as a blurred volume later.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import h5py
import numpy as np
from pydantic import Field

from hpcproc.errors import StepError
from hpcproc.steps.base import StepContext, StepParams, StepResult, TaskStep
from hpcproc.steps.sinogram import axis_values, resolve


def strongest_bins(sinos: np.ndarray, n: int, width: int = 1) -> list[int]:
    """The ``n`` q bins at the highest peaks of the total intensity (distinct peaks, not
    neighbouring bins of one), strongest first."""
    from scipy.signal import find_peaks

    total = np.clip(sinos, 0, None).sum(axis=(1, 2))
    peaks, _ = find_peaks(total, distance=max(1, 2 * width + 1))
    if len(peaks) == 0:
        peaks = np.array([int(np.argmax(total))])
    return [int(p) for p in peaks[np.argsort(total[peaks])[::-1][:n]]]


def find_centre_vo(
    sinos: np.ndarray, bins: list[int], width: int = 1, angles: np.ndarray | None = None
) -> list[float]:
    """Vo's centre for each bin (its sinogram summed with ``width`` neighbours on each side),
    searched over the middle half of the columns. The method wants 180°: of a longer scan,
    the rows of the first 180° (``angles`` in degrees) are used."""
    from algotom.prep.calculation import find_center_vo

    n_q, _n_theta, n_x = sinos.shape
    rows = slice(None)
    if angles is not None:
        rows = np.flatnonzero(np.abs(np.asarray(angles) - angles[0]) < 180.0 - 1e-6)
    centres = []
    for b in bins:
        sino = sinos[max(0, b - width) : min(n_q, b + width + 1), rows].sum(axis=0)
        c = find_center_vo(
            np.ascontiguousarray(sino, np.float32),
            start=n_x / 4.0,
            stop=3.0 * n_x / 4.0,
            step=0.25,
            dsp=False,
            ncore=1,
        )
        centres.append(float(c))
    return centres


class FindCentreParams(StepParams):
    sinograms: str = Field(
        default="sinogram/I",
        description="Sinograms (q, theta, x): a path, or relative to a needed step",
    )
    centre: float | None = Field(
        default=None,
        description="Rotation axis in sinogram columns (0 = first), if known; None = find it",
    )
    method: Literal["vo"] = Field(default="vo", description="Vo's method (algotom)")
    peaks: int = Field(default=5, ge=1, le=50, description="Strongest peaks to estimate on")
    width: int = Field(default=1, ge=0, description="Neighbouring q bins summed on each side")


class FindCentre(TaskStep):
    name: ClassVar[str] = "find_centre"
    Params = FindCentreParams
    description = "Centre of rotation from the sinograms (Vo's method), or the one given"
    inputs = {"sinograms": "(q, theta, x)"}
    outputs = {"centre_of_rotation": "value, in sinogram columns (results/)"}

    def finish(self, ctx: StepContext) -> StepResult:
        p = self.params
        path = resolve(ctx, p.sinograms)
        with h5py.File(ctx.processed, "r") as f:
            shape = f[path].shape
            if len(shape) != 3:
                raise StepError(f"{path} has shape {shape}, not (q, theta, x)")
            x = axis_values(f, path, 2)
            theta = axis_values(f, path, 1)
            sinos = np.asarray(f[path][()], np.float32) if p.centre is None else None
        n_x = shape[2]
        values: dict = {}
        messages = []
        if sinos is None:
            if not 0 <= p.centre <= n_x - 1:
                return StepResult(
                    failed=f"given centre of rotation {p.centre:g} is outside the sinogram: "
                    f"columns 0 to {n_x - 1}"
                )
            centre, values["method"] = float(p.centre), "given"
        else:
            bins = strongest_bins(sinos, p.peaks, p.width)
            angles = theta[1] if theta is not None else None
            centres = find_centre_vo(sinos, bins, p.width, angles)
            centre = float(np.median(centres))
            values.update(method=p.method, q_bins=bins, estimates=centres)
            spread = max(centres) - min(centres)
            if spread > 2.0:
                messages.append(("WARNING", f"centre estimates spread over {spread:.2f} columns"))
        values["centre_of_rotation"] = centre
        if x is not None and n_x > 1:
            values[f"centre_of_rotation_{x[2] or 'position'}"] = float(
                np.interp(centre, np.arange(n_x), x[1])
            )
        return StepResult(values=values, messages=messages)
