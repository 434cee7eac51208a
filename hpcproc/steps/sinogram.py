"""XRD-CT sinograms: the integrated patterns of a rotation x translation scan, one per q bin.

The patterns an integration step wrote, ``(n_theta, n_x, n_q)`` in the scan's shape, become
``(n_q, n_theta, n_x)`` (a sinogram per bin, the layout the reconstruction reads in blocks of
q bins), with the air scatter measured beside the sample subtracted: a constant left in a
sinogram reconstructs as a bowl that no clustering can tell from a phase.
"""

from __future__ import annotations

from typing import ClassVar

import h5py
import numpy as np
from pydantic import Field

from hpcproc.errors import StepError
from hpcproc.steps.base import (
    ArrayOutput,
    Axis,
    StepContext,
    StepParams,
    StepResult,
    TaskPlan,
    TaskStep,
)

OUTPUT = "sinogram/I"


def resolve(ctx: StepContext, path: str) -> str:
    """``path`` in the processed file: absolute as given, else inside one of the needed steps
    (the first that has it). StepError naming what is there when nothing matches."""
    with h5py.File(ctx.processed, "r") as f:
        if path.startswith("/"):
            if isinstance(f.get(path), h5py.Dataset):
                return path
            candidates = [path]
        else:
            candidates = [f"{proc}/{path}" for proc in ctx.needs.values()]
            for c in candidates:
                if isinstance(f.get(c), h5py.Dataset):
                    return c
        there = []
        for proc in ctx.needs.values():
            g = f.get(proc)
            if isinstance(g, h5py.Group):
                g.visititems(
                    lambda name, obj, p=proc: (
                        there.append(f"{p}/{name}")
                        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2
                        else None
                    )
                )
    tried = " or ".join(candidates) or f"{path} (this step needs no step to look in)"
    found = f"; the needed steps hold {', '.join(there)}" if there else ""
    raise StepError(f"input dataset {tried} not found in {ctx.processed.name}{found}")


def volume_input(ctx: StepContext, path: str, axes: str) -> tuple[str, tuple[int, ...]]:
    """The resolved path and shape of a 3-D input (``axes`` names its dimensions, e.g.
    "q, y, x"); StepError if it is not 3-D."""
    found = resolve(ctx, path)
    with h5py.File(ctx.processed, "r") as f:
        shape = f[found].shape
    if len(shape) != 3:
        raise StepError(f"{found} has shape {shape}, not ({axes})")
    return found, shape


def axis_values(f: h5py.File, path: str, dim: int) -> tuple[str, np.ndarray, str] | None:
    """(name, values, units) of dimension ``dim`` of an NXdata signal, from its @axes."""
    group = f[path].parent
    names = [a.decode() if isinstance(a, bytes) else str(a) for a in group.attrs.get("axes", [])]
    if dim >= len(names) or names[dim] == "." or names[dim] not in group:
        return None
    d = group[names[dim]]
    units = d.attrs.get("units", "")
    return names[dim], d[()], units.decode() if isinstance(units, bytes) else str(units)


class SinogramParams(StepParams):
    source: str = Field(
        default="integrated/I",
        description="Integrated patterns, scan-shaped (theta, x, q): a path in the processed "
        "file, or relative to a needed step (xrd_integrate writes <step>/integrated/I)",
    )
    theta_axis: str = Field(default="stage_theta", description="Scan axis of the rotation")
    x_axis: str = Field(default="stage_x", description="Scan axis of the translation")
    air_columns: int = Field(
        default=2,
        ge=0,
        description="Outermost translations on each side that see only air: their mean "
        "pattern (over all angles) is subtracted; 0 = none",
    )


class Sinogram(TaskStep):
    name: ClassVar[str] = "sinogram"
    Params = SinogramParams
    description = "Sinograms (q, theta, x) from the integrated patterns of an XRD-CT scan"
    inputs = {"source": "integrated patterns in the scan's shape (theta, x, q)"}
    outputs = {"I": "sinogram per q bin (q, theta, x), air scatter subtracted"}

    def _axes(self) -> tuple[int, int]:
        p, axes = self.params, self.scan.axes
        missing = [a for a in (p.theta_axis, p.x_axis) if a not in axes]
        if missing or len(axes) != 2:
            raise StepError(
                f"scan axes ({', '.join(axes)}) are not a rotation {p.theta_axis!r} x a "
                f"translation {p.x_axis!r}"
            )
        return axes.index(p.theta_axis), axes.index(p.x_axis)

    def plan(self, ctx: StepContext) -> TaskPlan:
        t, x = self._axes()
        path = resolve(ctx, self.params.source)
        with h5py.File(ctx.processed, "r") as f:
            shape = f[path].shape
            q = axis_values(f, path, 2)
        if len(shape) != 3 or (shape[t], shape[x]) != (self.scan.shape[t], self.scan.shape[x]):
            raise StepError(
                f"{path} has shape {shape}, not the scan's {self.scan.shape} + a pattern axis"
            )
        n_theta, n_x, n_q = shape[t], shape[x], shape[2]
        name, values, units = q if q is not None else ("bin", np.arange(n_q, dtype=float), "")
        sc = self.scan
        theta = Axis("theta", np.asarray(sc.axis_values[self.params.theta_axis], float), "deg")
        xs = Axis("x", np.asarray(sc.axis_values[self.params.x_axis], float), "mm")
        out = ArrayOutput(
            "I",
            (n_q, n_theta, n_x),
            group="sinogram",
            axes=(Axis(name, np.asarray(values, float), units), theta, xs),
            long_name="sinogram per radial bin, air scatter subtracted",
        )
        return TaskPlan(outputs=[out])

    def finish(self, ctx: StepContext) -> StepResult:
        t, x = self._axes()
        path = resolve(ctx, self.params.source)
        with h5py.File(ctx.processed, "r") as f:
            data = np.asarray(f[path][()], dtype=np.float32)
        data = np.moveaxis(data, (2, t, x), (0, 1, 2))  # (q, theta, x)
        messages = []
        bad = ~np.isfinite(data).all(axis=0)  # scan points without a pattern
        if bad.all():
            raise StepError(f"{path} holds no pattern (all NaN): did the integration run?")
        if bad.any():
            data[:, bad] = 0.0
            messages.append(("WARNING", f"{int(bad.sum())} scan points had no pattern: set to 0"))
        k = self.params.air_columns
        if k:
            if 2 * k >= data.shape[2]:
                raise StepError(f"air_columns {k} leaves no sample in {data.shape[2]} columns")
            air = np.concatenate([data[:, :, :k], data[:, :, -k:]], axis=2)
            data -= air.mean(axis=(1, 2), keepdims=True)
        return StepResult(arrays={OUTPUT: data}, messages=messages)
