"""Quick-look PNG plots of a step's results in a processed NeXus file (matplotlib, Agg).

One figure per step, chosen from what the step wrote in ``/entry/<step id>``:

- a map of patterns (``xrd_integrate``: ``integrated/I``, shape ``(ny, nx, npt)``): the mean
  pattern over the map against its last axis (q);
- maps (``xrf_windows``: ``maps/<line>``, each ``(ny, nx)``): one panel per dataset;
- a volume (``tomo_reconstruct``: ``(q, y, x)``): its middle slice along the first axis;
- a label map (``cluster_patterns``: ``phases/phase``): an image with one colour per label;
- otherwise by the signal's rank: a line (1-D), an image (2-D) or a middle slice (3-D+).

Unfilled points are NaN (the file is pre-filled while a job runs) and are left blank.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import h5py
import matplotlib
import numpy as np

matplotlib.use("Agg")

from matplotlib.figure import Figure

__all__ = ["NoPlot", "step_png"]

PATTERN_STEPS = ("xrd_integrate",)  # per-point 1-D patterns: plot their mean
MAX_PANELS = 12


class NoPlot(LookupError):
    """The file has nothing to plot for this step (yet)."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _open(path: Path) -> h5py.File:
    """Read-only, without HDF5's file lock (a job may be writing it, in SWMR mode)."""
    try:
        return h5py.File(path, "r", locking=False, swmr=True)
    except OSError:
        return h5py.File(path, "r", locking=False)


def _nxdata(proc: h5py.Group) -> list[h5py.Group]:
    """The step's NXdata groups, its default first."""
    groups = [
        g
        for g in proc.values()
        if isinstance(g, h5py.Group) and _text(g.attrs.get("NX_class", "")) == "NXdata"
    ]
    default = _text(proc.attrs.get("default", ""))
    groups.sort(key=lambda g: g.name.rsplit("/", 1)[-1] != default)
    return groups


def _signals(group: h5py.Group) -> list[str]:
    names = [_text(group.attrs.get("signal", ""))]
    aux = group.attrs.get("auxiliary_signals")
    if aux is not None:
        names += [_text(a) for a in np.atleast_1d(aux)]
    return [n for n in names if n and isinstance(group.get(n), h5py.Dataset)]


def _axis(group: h5py.Group, dim: int, size: int) -> tuple[np.ndarray, str]:
    """Values and label of dimension ``dim`` of the signal (indices if no axis is named)."""
    axes = [_text(a) for a in np.atleast_1d(group.attrs.get("axes", []))]
    name = axes[dim] if dim < len(axes) else "."
    if name != "." and isinstance(group.get(name), h5py.Dataset):
        values = np.asarray(group[name][()], dtype=float).ravel()
        if values.size == size:
            units = _text(group[name].attrs.get("units", ""))
            return values, f"{name} ({units})" if units else name
    return np.arange(size, dtype=float), f"index {dim}"


def _label(ds: h5py.Dataset) -> str:
    name = _text(ds.attrs.get("long_name", "")) or ds.name.rsplit("/", 1)[-1]
    units = _text(ds.attrs.get("units", ""))
    return f"{name} ({units})" if units and units not in name else name


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _image(fig: Figure, ax: Any, data: np.ndarray, title: str, labels: bool = False) -> None:
    data = np.asarray(data, dtype=float)
    if labels:
        finite = data[np.isfinite(data)]
        n = int(finite.max()) + 1 if finite.size else 1
        im = ax.imshow(data, origin="lower", cmap="tab10", vmin=-0.5, vmax=max(n, 1) - 0.5)
        fig.colorbar(im, ax=ax, ticks=range(n), shrink=0.8)
    else:
        im = ax.imshow(data, origin="lower", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _mean_pattern(group: h5py.Group, name: str, title: str) -> bytes:
    ds = group[name]
    data = np.asarray(ds[()], dtype=float)
    flat = data.reshape(-1, data.shape[-1])
    done = np.isfinite(flat).all(axis=1)
    if not done.any():
        raise NoPlot(f"{ds.name}: no point processed yet")
    mean = flat[done].mean(axis=0)
    x, xlabel = _axis(group, data.ndim - 1, data.shape[-1])
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot(x, mean, lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_label(ds))
    ax.set_title(f"{title}: mean of {int(done.sum())} of {len(done)} points", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _panels(group: h5py.Group, names: list[str], title: str) -> bytes:
    names = names[:MAX_PANELS]
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.4 * cols, 2.9 * rows))
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        _image(fig, ax, group[name][()], name)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _single(group: h5py.Group, name: str, title: str) -> bytes:
    ds = group[name]
    data = np.asarray(ds[()])
    labels = data.dtype.kind in "iub"
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    if data.ndim == 0:
        raise NoPlot(f"{ds.name} is a single value")
    if data.ndim == 1:
        x, xlabel = _axis(group, 0, data.shape[0])
        ax.plot(x, data, lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_label(ds))
        ax.set_title(title, fontsize=10)
    else:
        while data.ndim > 2:  # middle slice along the leading axes
            data = data[data.shape[0] // 2]
        what = _label(ds)
        if ds.ndim > 2:
            what += f", middle slice {ds.shape[0] // 2} of {ds.shape[0]}"
        _image(fig, ax, data, f"{title}: {what}", labels=labels)
    fig.tight_layout()
    return _png(fig)


def step_png(path: Path | str, step_id: str, uses: str = "") -> bytes:
    """The PNG plot of step ``step_id`` in processed file ``path``; NoPlot if none."""
    with _open(Path(path)) as f:
        proc = f.get(f"entry/{step_id}")
        if not isinstance(proc, h5py.Group):
            raise NoPlot(f"{path} has no step {step_id!r}")
        for group in _nxdata(proc):
            names = _signals(group)
            if not names:
                continue
            title = f"{step_id} ({uses})" if uses else step_id
            first = group[names[0]]
            if uses in PATTERN_STEPS and first.ndim >= 2:
                return _mean_pattern(group, names[0], title)
            if len(names) > 1 and all(group[n].ndim == 2 for n in names):
                return _panels(group, names, title)
            return _single(group, names[0], title)
    raise NoPlot(f"step {step_id!r} of {path} has no data to plot")
