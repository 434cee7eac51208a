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
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcproc import __version__
from hpcproc.outputs import ArrayOutput, Output
from hpcproc.scaninfo import ScanInfo

FLUSH_SECONDS = 0.05  # how stale the file may be for a reader while a job runs
MESSAGE_BYTES = 1024


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
        _text_field(self.entry, "end_time", 32)
        self.entry["experiment_identifier"] = scan.visit or ""
        # An external link lets a viewer browse the raw scan from the processed file.
        self.entry["raw"] = h5py.ExternalLink(str(scan.path), "/entry")
        self._counts: dict[str, int] = {}
        self._flushed = 0.0

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
        if self.f.swmr_mode:
            self._leave_swmr()
        proc = self.entry.create_group(step_id)
        proc.attrs["NX_class"] = "NXprocess"
        proc["program"] = f"hpcproc {uses}"
        proc["version"] = __version__
        proc["date"] = _now()
        proc["sequence_index"] = np.int32(sequence_index)
        # Fields a step fills in when it ends exist from the start, fixed-size: in SWMR mode
        # values can change but no field can be created.
        _text_field(proc, "status", 16)[()] = b"running"
        _text_field(proc, "message", MESSAGE_BYTES)
        _text_field(proc, "end_date", 32)
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
        flat = indices[order]
        for run in np.split(order, np.flatnonzero(np.diff(flat) != 1) + 1):
            for where, part, lead in self._slices(int(indices[run[0]]), len(run)):
                for key, values in results.items():
                    block = values[run[part]]
                    proc[key][where] = block.reshape(*lead, *block.shape[1:])
        self._counts[step_id] += len(indices)
        if time.monotonic() - self._flushed >= FLUSH_SECONDS:  # not per batch: flushes cost
            self.flush()

    def flush(self) -> None:
        """Publish to readers: the data first, then the progress counters, so a reader that
        sees a counter of N also sees the results of those N points."""
        self.f.flush()
        for step_id, count in self._counts.items():
            self.entry[step_id]["progress"][()] = count
        self.f.flush()
        self._flushed = time.monotonic()

    def _slices(self, first: int, n: int) -> Iterator[tuple[tuple, slice, tuple[int, ...]]]:
        """Dataset selections covering flat points [first, first + n), as few as possible: a
        partial row, then whole rows in one block (2-D scans), then a partial row. Yields
        (selection, slice of the points, leading shape of the selection)."""
        shape = self.scan.shape
        ncols = shape[-1]
        done = 0
        while done < n:
            point = first + done
            row, col = divmod(point, ncols)
            full_rows = (n - done) // ncols if col == 0 and len(shape) == 2 else 0
            if full_rows > 1:
                take = full_rows * ncols
                yield (slice(row, row + full_rows),), slice(done, done + take), (full_rows, ncols)
            else:
                take = min(ncols - col, n - done)
                lead = (
                    tuple(int(i) for i in np.unravel_index(row, shape[:-1])) if shape[:-1] else ()
                )
                yield (*lead, slice(col, col + take)), slice(done, done + take), (take,)
            done += take

    def finish_step(self, step_id: str, status: str, message: str = "") -> None:
        """Record how the step ended (in place: allowed while readers follow in SWMR mode)."""
        self.flush()
        proc = self.entry[step_id]
        proc["status"][()] = status.encode()
        proc["message"][()] = _fit(message, MESSAGE_BYTES)
        proc["end_date"][()] = _now().encode()
        self.flush()

    def start_swmr(self) -> None:
        """From now on readers may open the file with ``swmr=True`` and follow the progress
        counters and maps; only values of existing fields change while in SWMR mode."""
        self.flush()
        self.f.swmr_mode = True

    def _leave_swmr(self) -> None:
        """Reopen without SWMR, to add steps after a live phase. Readers may still hold the
        file (SWMR readers take a lock), so this open does not lock; they should reopen to see
        the new steps."""
        self.f.close()
        self.f = h5py.File(self.path, "r+", libver="latest", locking=False)
        self.entry = self.f["entry"]

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Closed for a while, so that task steps on other processes can read what earlier
        steps wrote (HDF5 would otherwise refuse them the file); reopened for writing after."""
        self.flush()
        self.f.close()
        try:
            yield
        finally:
            self.f = h5py.File(self.path, "r+", libver="latest", locking=False)
            self.entry = self.f["entry"]

    def add_arrays(self, step_id: str, outputs: list[ArrayOutput]) -> None:
        """Datasets for a task step's whole-array outputs (NaN until written), one NXdata per
        group, in the step's NXprocess."""
        if self.f.swmr_mode:
            self._leave_swmr()
        proc = self.entry[step_id]
        groups: dict[str, list[ArrayOutput]] = {}
        for out in outputs:
            groups.setdefault(out.group, []).append(out)
        for name, outs in groups.items():
            data = proc.require_group(name)
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = outs[0].name
            names = []
            for j, axis in enumerate(outs[0].axes):
                data[axis.name] = axis.values
                data[axis.name].attrs["units"] = axis.units
                data.attrs[f"{axis.name}_indices"] = np.int32(j)
                names.append(axis.name)
            names += ["."] * (len(outs[0].shape) - len(names))
            data.attrs["axes"] = names
            for out in outs:
                ds = data.create_dataset(
                    out.name,
                    shape=out.shape,
                    dtype=out.dtype,
                    fillvalue=np.nan if np.dtype(out.dtype).kind == "f" else 0,
                )
                if out.units:
                    ds.attrs["units"] = out.units
                if out.long_name:
                    ds.attrs["long_name"] = out.long_name
        if outputs and "default" not in proc.attrs:
            proc.attrs["default"] = outputs[0].group

    def write_block(self, step_id: str, key: str, start: int, block: np.ndarray) -> None:
        """Rows ``start:start+len(block)`` of a whole-array output."""
        ds = self.entry[step_id][key]
        ds[start : start + block.shape[0]] = block

    def write_values(self, step_id: str, values: Mapping[str, Any]) -> None:
        """Small results of a step (e.g. the centre of rotation found), as NXcollection."""
        if not values:
            return
        group = self.entry[step_id].require_group("results")
        group.attrs["NX_class"] = "NXcollection"
        for key, value in values.items():
            if key in group:
                del group[key]
            group[key] = _to_nexus(value)

    def close(self) -> None:
        if self.f.id.valid:
            self.entry["end_time"][()] = _now().encode()
            self.f.close()

    def __enter__(self) -> ProcessedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text_field(group: h5py.Group, name: str, size: int) -> h5py.Dataset:
    """An empty fixed-length text field (NX_CHAR) to be filled in later."""
    return group.create_dataset(name, shape=(), dtype=f"S{size}")


def _fit(text: str, size: int) -> bytes:
    """UTF-8 ``text`` cut to ``size`` bytes without splitting a character."""
    return text.encode()[:size].decode(errors="ignore").encode()


def _to_nexus(value: Any) -> Any:
    """Parameters as NeXus fields: numbers and strings as such, anything else as JSON text."""
    if isinstance(value, bool | int | float | np.number):
        return value
    if isinstance(value, str | Path):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, default=str)
