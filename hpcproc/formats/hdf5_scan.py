"""A NeXus/HDF5 scan file read into a :class:`~hpcproc.scaninfo.ScanInfo` through its layout."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from hpcproc.errors import ScanError
from hpcproc.formats import layouts
from hpcproc.formats.hdf5 import as_str, get, open_h5, text, time_field, walk, why
from hpcproc.formats.metadata import NO_OVERRIDES, Overrides, choose_beamline, choose_visit
from hpcproc.scaninfo import ScanInfo


def read_hdf5_scan(
    path: Path, layout: str | None = None, said: Overrides = NO_OVERRIDES
) -> ScanInfo:
    f, swmr = open_h5(path)
    with f:
        try:
            return _read(f, path, layout, said, swmr)
        except ScanError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
            raise ScanError(f"{path}: cannot read scan metadata: {why(e)}") from e


def _read(f: h5py.File, p: Path, layout_name: str | None, said: Overrides, swmr: bool) -> ScanInfo:
    w = walk(f)
    layout = layouts.pick(f, w, p, layout_name)
    found = layout.read(f, w, p)
    warnings = list(found.warnings)
    entry = found.entry
    meta = {
        k: (text(entry, k) if entry is not None else None)
        for k in (
            "instrument/name",
            "entry_identifier",
            "experiment_identifier",
            "scan_command",
            "title",
        )
    }
    beamline = choose_beamline(meta["instrument/name"], p.stem, said, warnings)
    number = meta["entry_identifier"]
    scan_id = f"{beamline}-{int(number):06d}" if number and number.isdigit() else p.stem
    visit = choose_visit(meta["experiment_identifier"], said, warnings)
    scan_command = meta["scan_command"] or ""
    finished = found.finished
    if finished is None:
        # No scan_finished: a non-empty end_time (live writers pre-create it empty), else
        # whether a writer still holds the file (it opens it for SWMR writing: a plain open
        # then fails); a closed file without either is a finished scan.
        finished = bool(entry is not None and text(entry, "end_time")) or not swmr

    axis_values: dict[str, tuple[float, ...]] = {}
    axis_units: dict[str, str] = {}
    for k, a in enumerate(found.axes):
        dpath = found.axis_paths.get(a)
        d = get(f, dpath) if dpath else None
        if isinstance(d, h5py.Dataset) and d.ndim >= 1 and np.issubdtype(d.dtype, np.number):
            axis_values[a] = _grid_values(d, found.shape, k)
            axis_units[a] = text_attr(d, "units")
            continue
        axis_values[a] = tuple(float(i) for i in range(found.shape[k]))
        axis_units[a] = ""
        if dpath and dpath in w.missing_links:
            warnings.append(
                f"axis {a} ({dpath}) is an external link to {w.missing_links[dpath]}, which is "
                f"not there: positions shown as indices 0..{found.shape[k] - 1}"
            )
        elif a not in ("point", "frame") and not a.startswith("dim"):
            warnings.append(f"no positions for axis {a}: shown as indices 0..{found.shape[k] - 1}")
    return ScanInfo(
        path=p,
        scan_id=scan_id,
        beamline=beamline,
        visit=visit,
        title=meta["title"] or scan_command,
        scan_command=scan_command,
        start_time=time_field(entry, "start_time") if entry is not None else None,
        end_time=time_field(entry, "end_time") if entry is not None else None,
        shape=found.shape,
        axes=found.axes,
        axis_values=axis_values,
        axis_units=axis_units,
        finished=finished,
        datasets=w.datasets,
        nx_classes=frozenset(w.classes),
        format="hdf5",
        layout=layout.name,
        roles=found.roles,
        missing_links=w.missing_links,
        warnings=tuple(warnings),
    )


def text_attr(d: h5py.Dataset, name: str) -> str:
    return as_str(d.attrs.get(name, ""))


def _grid_values(d: h5py.Dataset, shape: tuple[int, ...], k: int) -> tuple[float, ...]:
    """Grid values of axis ``k``: positions along that axis with every other index at 0."""
    n_points = int(np.prod(shape))
    pos = np.asarray(d[()], dtype=float)
    if pos.size == shape[k] and pos.size != n_points:
        return tuple(float(v) for v in pos.ravel())
    flat = np.full(n_points, np.nan)
    flat[: min(pos.size, n_points)] = pos.ravel()[:n_points]
    grid = flat.reshape(shape)
    index = tuple(slice(None) if i == k else 0 for i in range(len(shape)))
    return tuple(float(v) for v in grid[index])
