"""The processed NeXus file of one job: an NXprocess per step, holding provenance and NXdata.

Layout::

    / @default=entry
    /entry (NXentry) @default=<first step>
    /entry/<step id> (NXprocess): program, version, date, sequence_index, status, progress,
        parameters (NXparameters), provenance (NXnote, JSON), <group> (NXdata) @default=<group>
    /entry/<step id>/<group>: signal = first output of the group, axes = scan axes + output axes

Maps are stored in the scan's shape (e.g. y, x, q), pre-filled with NaN so a viewer opening the
file during processing sees which points are done.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcproc import __version__
from hpcproc.nexus.scan import ScanInfo
from hpcproc.steps.base import Output

_STR = h5py.string_dtype()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ProcessedFile:
    """Writer of one job's processed file (only the dispatcher's process writes it)."""

    def __init__(self, path: Path, scan: ScanInfo, *, title: str) -> None:
        self.path = Path(path)
        self.scan = scan
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.path, "w", libver="latest")
        self.f.attrs.update(
            NX_class="NXroot",
            default="entry",
            file_name=str(self.path),
            file_time=_now(),
            creator=f"hpcproc {__version__}",
            HDF5_Version=h5py.version.hdf5_version,
        )
        self.entry = self.f.create_group("entry")
        self.entry.attrs["NX_class"] = "NXentry"
        self.entry["title"] = title
        self.entry["program_name"] = "hpcproc"
        self.entry["program_name"].attrs["version"] = __version__
        self.entry["start_time"] = _now()
        self.entry["experiment_identifier"] = scan.visit or ""
        # An external link lets a viewer browse the raw scan from the processed file.
        self.entry["raw"] = h5py.ExternalLink(str(scan.path), "/entry")
        self._counts: dict[str, int] = {}

    def add_step(
        self,
        step_id: str,
        *,
        sequence_index: int,
        uses: str,
        parameters: Mapping[str, Any],
        provenance: Mapping[str, Any],
        outputs: list[Output],
    ) -> None:
        """Create the step's NXprocess with its provenance and empty NXdata for its outputs."""
        proc = self.entry.create_group(step_id)
        proc.attrs["NX_class"] = "NXprocess"
        proc["program"] = f"hpcproc {uses}"
        proc["version"] = __version__
        proc["date"] = _now()
        proc["sequence_index"] = np.int32(sequence_index)
        proc["status"] = np.array("running", dtype=_STR)
        proc.create_dataset("progress", data=np.int64(0))
        params = proc.create_group("parameters")
        params.attrs["NX_class"] = "NXparameters"
        for key, value in parameters.items():
            params[key] = _to_nexus(value)
        note = proc.create_group("provenance")
        note.attrs["NX_class"] = "NXnote"
        note["type"] = "application/json"
        note["description"] = "inputs, recipe and LIMS identifiers of this step"
        note["data"] = json.dumps(provenance, indent=1, default=str)
        groups: dict[str, list[Output]] = {}
        for out in outputs:
            groups.setdefault(out.group, []).append(out)
        for name, outs in groups.items():
            self._add_nxdata(proc, name, outs)
        if outputs:
            proc.attrs["default"] = outputs[0].group
        if "default" not in self.entry.attrs:
            self.entry.attrs["default"] = step_id
        self._counts[step_id] = 0
        self.f.flush()

    def _add_nxdata(self, proc: h5py.Group, name: str, outs: list[Output]) -> None:
        scan = self.scan
        data = proc.create_group(name)
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = outs[0].name
        if len(outs) > 1:
            data.attrs["auxiliary_signals"] = [o.name for o in outs[1:]]
        axes = list(scan.axes)
        for i, axis in enumerate(scan.axes):
            data[axis] = np.asarray(scan.axis_values[axis], dtype=np.float64)
            data[axis].attrs["units"] = scan.axis_units.get(axis, "")
            data.attrs[f"{axis}_indices"] = np.int32(i)
        for j, axis in enumerate(outs[0].axes):
            axes.append(axis.name)
            data[axis.name] = axis.values
            data[axis.name].attrs["units"] = axis.units
            data.attrs[f"{axis.name}_indices"] = np.int32(len(scan.axes) + j)
        axes += ["."] * (len(scan.axes) + len(outs[0].shape) - len(axes))
        data.attrs["axes"] = axes
        for out in outs:
            shape = (*scan.shape, *out.shape)
            chunk_points = max(1, min(scan.shape[-1], 2**20 // max(1, int(np.prod(out.shape)))))
            ds = data.create_dataset(
                out.name,
                shape=shape,
                dtype=out.dtype,
                fillvalue=np.nan,
                chunks=(*([1] * (len(scan.shape) - 1)), chunk_points, *out.shape),
            )
            ds.attrs.update(units=out.units, long_name=out.long_name or out.name)

    def write(self, step_id: str, indices: np.ndarray, results: Mapping[str, np.ndarray]) -> None:
        """Store the results of scan points ``indices`` (flat, C order of the scan shape)."""
        proc = self.entry[step_id]
        indices = np.asarray(indices)
        order = np.argsort(indices, kind="stable")
        ncols = self.scan.shape[-1]
        # One slice per run of consecutive points within one row of the fastest axis.
        breaks = np.flatnonzero(
            (np.diff(indices[order]) != 1) | (np.diff(indices[order] // ncols) != 0)
        )
        for run in np.split(order, breaks + 1):
            first = int(indices[run[0]])
            row = (
                np.unravel_index(first // ncols, self.scan.shape[:-1])
                if self.scan.shape[:-1]
                else ()
            )
            where = (*(int(r) for r in row), slice(first % ncols, first % ncols + len(run)))
            for key, values in results.items():
                proc[key][where] = values[run]
        self._counts[step_id] += len(indices)
        proc["progress"][()] = self._counts[step_id]
        self.f.flush()

    def finish_step(self, step_id: str, status: str, message: str = "") -> None:
        proc = self.entry[step_id]
        proc["status"][()] = status
        if message:
            proc["message"] = message
        proc["end_date"] = _now()
        self.f.flush()

    def close(self) -> None:
        if self.f.id.valid:
            self.entry["end_time"] = _now()
            self.f.close()

    def __enter__(self) -> ProcessedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_nexus(value: Any) -> Any:
    """Parameters as NeXus fields: numbers and strings as such, anything else as JSON text."""
    if isinstance(value, bool | int | float | np.number):
        return value
    if isinstance(value, str | Path):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, default=str)
