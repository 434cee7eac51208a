"""Detector images (TIFF, CBF, EDF and the other formats fabio reads) as a scan.

One image file is a scan of one point; a file holding several frames (multi-frame EDF, HDF5
written by some detectors is not this: it goes through the HDF5 layouts) is a scan of its
frames; a numbered series (``ceo2_0001.tif``, ``ceo2_0002.tif``, ... given as a glob pattern
such as ``ceo2_*.tif``) is a scan of its files in name order. The frames are the dataset
:data:`FRAMES` of the scan, so recipes and steps read them like any HDF5 frames.
"""

from __future__ import annotations

import glob
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hpcproc.errors import ScanError
from hpcproc.formats.metadata import NO_OVERRIDES, Overrides, choose_beamline, choose_visit
from hpcproc.scaninfo import DatasetInfo, ScanInfo

FRAMES = "/frames"  # the pseudo-dataset of an image scan's frames


def _open(path: str):  # -> fabio image
    import fabio

    try:
        return fabio.open(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ScanError(f"{path}: not an image fabio can read: {exc}") from None


def series(path: Path) -> list[Path]:
    """The files of a scan given as one file or a glob pattern (sorted by name)."""
    if any(c in path.name for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path)))
        if not files:
            raise ScanError(f"{path}: no image file matches")
        return files
    if not path.exists():
        raise ScanError(f"{path}: scan file not found")
    return [path]


def _frames(files: list[Path]) -> list[tuple[str, int]]:
    """(file, frame in that file) for every frame of the scan."""
    out = []
    for f in files:
        n = max(1, int(getattr(_open(str(f)), "nframes", 1) or 1))
        out.extend((str(f), i) for i in range(n))
    return out


def read_image_scan(path: Path, said: Overrides = NO_OVERRIDES) -> ScanInfo:
    files = series(path)
    frames = _frames(files)
    first = _open(frames[0][0])
    data = first.data
    if data is None or data.ndim != 2:
        shape = None if data is None else data.shape
        raise ScanError(f"{files[0]}: an image of shape {shape}, not a 2-D detector frame")
    warnings: list[str] = []
    header = {str(k).lower(): str(v) for k, v in (first.header or {}).items()}
    beamline = choose_beamline(header.get("beamline"), "", said, warnings)
    visit = choose_visit(None, said, warnings)
    n = len(frames)
    frames_info = DatasetInfo(FRAMES, (n, *data.shape), str(data.dtype))
    stem = files[0].stem
    return ScanInfo(
        path=files[0].absolute(),
        scan_id=stem,
        beamline=beamline,
        visit=visit,
        title=f"{type(first).__name__} {stem}" + (f" (+{len(files) - 1} files)" if n > 1 else ""),
        scan_command="",
        start_time=None,
        end_time=None,
        shape=(n,),
        axes=("frame",),
        axis_values={"frame": tuple(float(i) for i in range(n))},
        axis_units={"frame": ""},
        finished=True,
        datasets={FRAMES: frames_info},
        format="image",
        layout="image",
        roles={"frames": FRAMES},
        warnings=tuple(warnings),
        files=tuple(str(f.absolute()) for f in files),
    )


class ImageFrames:
    """Frames of an image scan, with the interface of :class:`hpcproc.nexus.frames.FrameReader`."""

    def __init__(self, scan: ScanInfo) -> None:
        self.frames = _frames([Path(f) for f in scan.files or (str(scan.path),)])
        info = scan.datasets[FRAMES]
        self.frame_shape = tuple(info.shape[1:])
        self.dtype = np.dtype(info.dtype)
        self.n_frames = len(self.frames)
        self._lock = threading.Lock()  # fabio images are not meant to be shared by threads

    def refresh(self) -> int:
        return self.n_frames

    def _read(self, i: int) -> np.ndarray:
        file, k = self.frames[i]
        with self._lock:
            im = _open(file)
            data = im.data if k == 0 else im.getframe(k).data
        if data.shape != self.frame_shape:
            raise ScanError(f"{file}: frame {k} has shape {data.shape}, not {self.frame_shape}")
        return data

    def read_batch(self, indices: Iterable[int], out: np.ndarray | None = None) -> np.ndarray:
        idx = list(indices)
        if out is None:
            out = np.empty((len(idx), *self.frame_shape), self.dtype)
        for j, i in enumerate(idx):
            out[j] = self._read(i)
        return out

    def close(self) -> None:
        pass
