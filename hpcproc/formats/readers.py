"""Reading a scan's data by dataset, whatever the file's format: frames for frame steps (on the
workers), whole arrays for task steps."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from hpcproc.errors import ScanError
from hpcproc.scaninfo import ScanInfo


class Frames(Protocol):
    """What a frame step's engine reads frames through (HDF5, images: same interface)."""

    n_frames: int
    frame_shape: tuple[int, ...]
    dtype: np.dtype

    def refresh(self) -> int: ...

    def read_batch(self, indices: list[int], out: np.ndarray | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


def open_frames(scan: ScanInfo, dataset: str, frame_ndim: int | None = None) -> Frames:
    """A reader of ``dataset``'s frames (``frame_ndim`` dimensions each); one per process."""
    if (why := scan.missing_input(dataset)) is not None:
        raise ScanError(why)
    if scan.format == "image":
        from hpcproc.formats.images import ImageFrames

        return ImageFrames(scan)
    if scan.format != "hdf5":
        raise ScanError(f"{scan.path}: a {scan.format} file has no frames")
    from hpcproc.nexus.frames import FrameReader

    return FrameReader(scan.path, dataset, frame_ndim=frame_ndim)


def read_array(scan: ScanInfo, dataset: str) -> np.ndarray:
    """The whole of ``dataset`` (a column, an HDF5 dataset, the frames of an image scan)."""
    if (why := scan.missing_input(dataset)) is not None:
        raise ScanError(why)
    if scan.format in ("xdi", "spec", "columns"):
        from hpcproc.formats.columns import PREFIX, columns

        return columns(scan.path, scan.format)[dataset.removeprefix(PREFIX)]
    if scan.format == "image":
        r = open_frames(scan, dataset)
        return r.read_batch(list(range(r.n_frames)))
    from hpcproc.formats.hdf5 import open_scan_file

    with open_scan_file(scan.path) as f:
        try:
            return np.asarray(f[dataset][()])
        except (KeyError, OSError, ValueError) as exc:
            raise ScanError(f"{scan.path}: cannot read {dataset}: {exc}") from None
