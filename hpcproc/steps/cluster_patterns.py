"""Phases of an XRD-CT volume: the voxels' diffraction patterns grouped into a few components.

Each voxel of the reconstruction (q, y, x) holds a pattern; voxels of one phase share a
pattern shape, in proportion to how much of it they hold. NMF (non-negative, like intensities)
finds the component patterns and each voxel's amount of each; k-means on the patterns scaled
to unit length finds the same groups when they are well apart. Voxels with little intensity
(air, the corners outside the reconstruction circle) take no part in the fit, and voxels less
than half full of any phase get label 0, as the truth of a partly filled edge pixel would.
"""

from __future__ import annotations

from typing import ClassVar, Literal

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
from hpcproc.steps.sinogram import axis_values, volume_input


def cluster(
    volume: np.ndarray,
    n_phases: int,
    method: str = "nmf",
    threshold: float = 0.1,
    fill: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels (ny, nx) 0..n, fractions (n, ny, nx), patterns (n, n_q))`` of a volume
    ``(n_q, ny, nx)``.

    A phase's fraction is its amount relative to a voxel full of it (the 90th percentile of
    its amount over the voxels where it dominates), so maps of phases with weak and strong
    patterns compare; a voxel less than ``fill`` full is empty (label 0), like the pixels of a
    partly filled edge. Patterns have a maximum of 1; components are ordered by the position
    of their strongest peak, so labels are stable."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import NMF

    n_q, ny, nx = volume.shape
    x = np.clip(np.nan_to_num(volume.reshape(n_q, -1).T.astype(np.float64)), 0, None)
    total = x.sum(axis=1)
    occupied = total > threshold * np.percentile(total, 99)
    if occupied.sum() < n_phases:
        raise StepError(
            f"only {int(occupied.sum())} voxels above {threshold:g} x the brightest: "
            f"too few for {n_phases} phases"
        )
    xs = x[occupied]
    if method == "nmf":
        model = NMF(n_phases, init="nndsvda", max_iter=1000, random_state=seed)
        w = model.fit_transform(xs)
        h = model.components_
    elif method == "kmeans":
        unit = xs / np.linalg.norm(xs, axis=1, keepdims=True)
        km = KMeans(n_phases, n_init=10, random_state=seed).fit(unit)
        h = np.stack([xs[km.labels_ == k].mean(axis=0) for k in range(n_phases)])
        w = _nnls(xs, h)
    else:
        raise ValueError(f"unknown method {method!r} (nmf, kmeans)")
    scale = h.max(axis=1)
    scale[scale == 0] = 1.0
    h = h / scale[:, None]
    w = w * scale[None, :]
    order = np.argsort(np.argmax(h, axis=1), kind="stable")
    h, w = h[order], w[:, order]
    dominant = np.argmax(w, axis=1)
    full = np.array(
        [
            np.percentile(w[dominant == k, k], 90) if (dominant == k).any() else 0.0
            for k in range(n_phases)
        ]
    )
    w = w / np.where(full > 0, full, 1.0)[None, :]
    labels = np.zeros(ny * nx, np.int32)
    labels[occupied] = np.where(w.sum(axis=1) >= fill, dominant + 1, 0)
    fractions = np.zeros((n_phases, ny * nx))
    fractions[:, occupied] = w.T
    return labels.reshape(ny, nx), fractions.reshape(n_phases, ny, nx), h


def _nnls(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Non-negative amounts of each component pattern ``h`` (k, n_q) in each row of ``x``."""
    from scipy.optimize import nnls

    return np.stack([nnls(h.T, row)[0] for row in x])


class ClusterPatternsParams(StepParams):
    reconstruction: str = Field(
        default="reconstruction/I",
        description="Volume (q, y, x): a path, or relative to a needed step",
    )
    n_phases: int = Field(default=3, ge=1, le=50, description="Number of phases (components)")
    method: Literal["nmf", "kmeans"] = Field(default="nmf", description="NMF or k-means")
    threshold: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Voxels with less total intensity than this x the brightest (99th "
        "percentile) are left out of the fit",
    )
    fill: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Voxels less full than this (summed phase fractions) are empty (label 0)",
    )
    seed: int = Field(default=0, description="Random state (results are reproducible)")


class ClusterPatterns(TaskStep):
    name: ClassVar[str] = "cluster_patterns"
    Params = ClusterPatternsParams
    description = "Phase map and phase patterns from a reconstructed XRD-CT volume (NMF/k-means)"
    inputs = {"reconstruction": "volume (q, y, x)"}
    outputs = {
        "label": "phase of each voxel (0 = empty)",
        "fraction": "fraction of each voxel filled by each phase",
        "I": "pattern of each phase (maximum 1)",
    }

    def _input(self, ctx: StepContext) -> tuple[str, tuple[int, ...]]:
        return volume_input(ctx, self.params.reconstruction, "q, y, x")

    def plan(self, ctx: StepContext) -> TaskPlan:
        path, (n_q, ny, nx) = self._input(ctx)
        n = self.params.n_phases
        with h5py.File(ctx.processed, "r") as f:
            q, y, x = (axis_values(f, path, d) for d in range(3))
        q_axis = Axis(*q) if q else Axis("bin", np.arange(n_q, dtype=float))
        y_axis = Axis(*y) if y else Axis("y", np.arange(ny, dtype=float))
        x_axis = Axis(*x) if x else Axis("x", np.arange(nx, dtype=float))
        phase = Axis("phase", np.arange(1, n + 1, dtype=float))
        return TaskPlan(
            outputs=[
                ArrayOutput(
                    "label",
                    (ny, nx),
                    group="phases",
                    dtype="int32",
                    axes=(y_axis, x_axis),
                    long_name="phase (0 = empty)",
                ),
                ArrayOutput(
                    "fraction",
                    (n, ny, nx),
                    group="fraction",
                    axes=(phase, y_axis, x_axis),
                    long_name="fraction of each voxel filled by each phase",
                ),
                ArrayOutput(
                    "I",
                    (n, n_q),
                    group="patterns",
                    axes=(phase, q_axis),
                    long_name="pattern of each phase",
                ),
            ]
        )

    def finish(self, ctx: StepContext) -> StepResult:
        p = self.params
        path, _ = self._input(ctx)
        with h5py.File(ctx.processed, "r") as f:
            volume = f[path][()]
        labels, fractions, patterns = cluster(
            volume, p.n_phases, p.method, threshold=p.threshold, fill=p.fill, seed=p.seed
        )
        counts = np.bincount(labels.ravel(), minlength=p.n_phases + 1)
        return StepResult(
            arrays={
                "phases/label": labels,
                "fraction/fraction": fractions.astype(np.float32),
                "patterns/I": patterns.astype(np.float32),
            },
            values={
                "method": p.method,
                "n_phases": p.n_phases,
                "voxels_per_phase": counts[1:].tolist(),
                "empty_voxels": int(counts[0]),
            },
        )
