"""Following a scan that a detector's writer is still writing (HDF5 SWMR).

The writer appends each point's frames, then its unique key, then flushes: a point whose key
is non-zero is complete and safe to read. ``scan_finished`` marks the end of the scan.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np

from hpcproc.errors import ScanError
from hpcproc.formats.hdf5 import open_h5
from hpcproc.scaninfo import frame_count

KEYS = "/entry/diamond_scan/keys/uniqueKeys"
FINISHED = "/entry/diamond_scan/scan_finished"


class ScanFollower:
    """How many points of a growing scan are complete, and whether it has ended."""

    def __init__(
        self, path: str | Path, total: int, dataset: str | None = None, frame_ndim: int = 2
    ) -> None:
        self.path = Path(path)
        self.total = total
        self.frame_ndim = frame_ndim  # the dataset's other (leading) dimensions are points
        self._file, self.swmr = open_h5(self.path)
        self._keys = self._get(KEYS)
        self._finished = self._get(FINISHED)
        # Without unique keys, a dataset's length is the best count there is.
        self._frames = self._get(dataset) if self._keys is None and dataset else None
        if self._keys is None and self._frames is None:
            self.close()
            raise ScanError(f"{self.path}: no {KEYS} to follow the scan by")
        self.complete = 0
        self.finished = False
        self.last_change = time.monotonic()

    def _get(self, name: str | None) -> h5py.Dataset | None:
        obj = self._file.get(name) if name else None
        return obj if isinstance(obj, h5py.Dataset) else None

    def poll(self) -> tuple[int, bool]:
        """Refresh from the file: (complete points, scan finished)."""
        try:
            if self._finished is not None:
                self._finished.refresh()
                was, self.finished = self.finished, bool(self._finished[()])
                if self.finished and not was:
                    self._reopen()  # the end is final: count from a fresh view of the file
            complete = self._count()
        except (OSError, RuntimeError, ValueError) as exc:
            raise ScanError(f"{self.path}: cannot follow the scan: {exc}") from exc
        if complete > self.complete:
            self.complete = complete
            self.last_change = time.monotonic()
        return self.complete, self.finished

    def _reopen(self) -> None:
        """Open the file again (the writer may have closed it by now): whatever a long-lived
        SWMR view had cached, the last count comes from what is on disk."""
        dataset = self._frames.name if self._frames is not None else None
        self.close()  # first: HDF5 would hand a second open of the same file the same view
        for attempt in range(20):  # the writer may be closing the file this very moment
            try:
                self._file, self.swmr = open_h5(self.path)
                break
            except ScanError:
                if attempt == 19:
                    raise
                time.sleep(0.1)
        self._keys = self._get(KEYS)
        self._finished = self._get(FINISHED)
        self._frames = self._get(dataset) if self._keys is None and dataset else None

    def _count(self) -> int:
        if self._keys is None:
            assert self._frames is not None
            self._frames.refresh()
            return min(self.total, frame_count(self._frames.shape, self.frame_ndim))
        self._keys.refresh()
        n = min(self.total, int(self._keys.shape[0]))
        if n <= self.complete:
            return self.complete
        fresh = self._keys[self.complete : n]
        zero = np.flatnonzero(fresh == 0)  # keys are written last: the first zero ends the run
        return self.complete + (int(zero[0]) if zero.size else len(fresh))

    @property
    def idle(self) -> float:
        """Seconds since the last new point."""
        return time.monotonic() - self.last_change

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ScanFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
