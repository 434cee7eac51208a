"""Fast frame reader: direct-chunk read + Blosc decode into reused buffers, with a safe fallback.

For a dataset stored one frame per chunk through the HDF5 Blosc filter (id 32001), reading
``dset.id.read_direct_chunk`` and decoding the chunk with ``blosc2.decompress(..., dst=out)``
skips the HDF5 filter pipeline and its per-frame allocations (FACTS.md: ~1.3-2x the frames/s of
``dset[i]``, and decoding releases the GIL so threads decode in parallel). Every other layout
(other codecs, virtual datasets, several frames per chunk, a chunk stored with a filter skipped)
is read the normal way, ``dset.read_direct``, through the filters hdf5plugin registers.

    with FrameReader("i18-000001.nxs", "/entry/instrument/excalibur/data") as r:
        buf = np.empty(r.frame_shape, r.dtype)
        for i in range(r.n_frames):
            frame = r.read(i, out=buf)   # reuse one buffer

A FrameReader holds the file open: make one per process / worker (pass the path and dataset name
to Dask tasks, never the reader). A reader may be shared by threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import blosc2
import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc & co. filters for the fallback path)
import numpy as np

from hpcproc.errors import ScanError
from hpcproc.formats.hdf5 import open_h5
from hpcproc.scaninfo import frame_count

__all__ = ["BLOSC_FILTER_ID", "FrameReader"]

BLOSC_FILTER_ID = 32001
_BLOSC_HEADER = 16  # blosc1 header: version, versionlz, flags, typesize, nbytes, blocksize, cbytes
_BLOSC_OVERHEAD = 64  # max(cbytes - nbytes) for a valid chunk (blosc1: 16, blosc2: 32)

# Both Python Blosc bindings hold the GIL while decoding unless told otherwise (FACTS.md).
blosc2.set_releasegil(True)


def _is_direct(d: h5py.Dataset, frame_shape: tuple[int, ...], point_dims: int) -> bool:
    if d.is_virtual or d.chunks is None or tuple(d.chunks) != (1,) * point_dims + frame_shape:
        return False
    if d.dtype.hasobject or d.dtype.kind not in "uifcb":
        return False
    try:
        if d.external:
            return False
        plist = d.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    except (OSError, RuntimeError, ValueError):
        return False
    return filters == [BLOSC_FILTER_ID]


class FrameReader:
    """Frames of one HDF5 dataset, read as fast as the layout allows: (N, *frame_shape), or
    (ny, nx, *frame_shape) as classic GDA writes maps (frame ``i`` is point ``i`` in scan
    order), or one bare frame (a scan of one point)."""

    def __init__(
        self,
        path: str | Path,
        dataset: str,
        *,
        direct: bool | None = None,
        frame_ndim: int | None = None,
    ) -> None:
        """Open ``dataset`` of ``path`` read-only. ``direct=False`` forces the filter path;
        ``frame_ndim``: dimensions of one frame (default: all but the first)."""
        self.path = Path(path)
        self.dataset = dataset
        self._file, self.swmr = open_h5(self.path)
        try:
            try:
                d = self._file.get(dataset)
            except (KeyError, OSError, ValueError) as e:
                raise ScanError(f"{self.path}: cannot open {dataset}: {_why(e)}") from e
            if d is None:
                raise ScanError(f"{self.path}: no dataset {dataset}")
            if not isinstance(d, h5py.Dataset):
                raise ScanError(f"{self.path}: {dataset} is a group, not a dataset")
            need = 2 if frame_ndim is None else frame_ndim
            if d.ndim < need:
                raise ScanError(
                    f"{self.path}: {dataset} has shape {d.shape}: frames need >= {need} dimensions"
                )
        except BaseException:
            self._file.close()
            raise
        self._dset = d
        self.point_dims = 1 if frame_ndim is None else d.ndim - frame_ndim
        self.frame_shape: tuple[int, ...] = tuple(int(s) for s in d.shape[self.point_dims :])
        self.dtype: np.dtype = d.dtype
        self.n_frames: int = self._count()
        self.frame_nbytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        auto = _is_direct(d, self.frame_shape, self.point_dims)
        self.direct: bool = auto if direct is None else (bool(direct) and auto)
        self._zero = (0,) * len(self.frame_shape)
        self._local = threading.local()  # per-thread raw chunk buffer

    def _count(self) -> int:
        return frame_count(self._dset.shape, len(self.frame_shape))

    def _where(self, i: int) -> tuple[int, ...]:
        """The dataset's leading indices of frame ``i`` (scan order, slowest axis first)."""
        if self.point_dims == 1:
            return (i,)
        if self.point_dims == 0:
            return ()
        lead = self._dset.shape[: self.point_dims]
        return tuple(int(v) for v in np.unravel_index(i, lead))

    # --- context / lifetime ------------------------------------------------------------------
    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
            self._file = None

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        mode = "direct" if self.direct else "filter"
        return (
            f"FrameReader({str(self.path)!r}, {self.dataset!r}: {self.n_frames} x "
            f"{self.frame_shape} {self.dtype}, {mode})"
        )

    def refresh(self) -> int:
        """Pick up frames appended by a SWMR writer; returns the new ``n_frames``."""
        if self._file is None:
            raise ScanError(f"{self.path}: reader is closed")
        try:
            self._dset.refresh()
        except (OSError, RuntimeError, ValueError) as e:
            if self.swmr:
                raise ScanError(f"{self.path}: cannot refresh {self.dataset}: {_why(e)}") from e
        self.n_frames = self._count()
        return self.n_frames

    # --- reading ------------------------------------------------------------------------------
    def _check_out(self, out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        if out is None:
            return np.empty(shape, self.dtype)
        if (
            not isinstance(out, np.ndarray)
            or out.shape != shape
            or out.dtype != self.dtype
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(
                f"out must be a writeable C-contiguous {self.dtype} array of shape {shape}"
            )
        return out

    def _index(self, index: Any) -> int:
        i = int(index)
        if i < 0:
            i += self.n_frames
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {index} out of range (0..{self.n_frames - 1})")
        return i

    def _raw(self) -> np.ndarray:
        buf = getattr(self._local, "raw", None)
        if buf is None:
            buf = np.empty(self.frame_nbytes + _BLOSC_OVERHEAD, np.uint8)
            self._local.raw = buf
        return buf

    def _corrupt(self, i: int, why: str) -> ScanError:
        return ScanError(f"{self.path}: {self.dataset} frame {i}: corrupt chunk ({why})")

    def _read_filtered(self, i: int, out: np.ndarray) -> None:
        try:
            self._dset.read_direct(out, source_sel=self._where(i) or np.s_[...])
        except (OSError, RuntimeError, ValueError) as e:
            raise self._corrupt(i, _why(e)) from e

    def _read_into(self, i: int, out: np.ndarray) -> None:
        if not self.direct:
            self._read_filtered(i, out)
            return
        try:
            at = (*self._where(i), *self._zero)
            mask, chunk = self._dset.id.read_direct_chunk(at, out=self._raw())
        except (OSError, ValueError, RuntimeError):
            # larger than any valid chunk (garbage), or not allocated: let the checks decide
            try:
                mask, chunk = self._dset.id.read_direct_chunk(at)
            except (OSError, ValueError, RuntimeError):
                self._read_filtered(i, out)  # unwritten chunk reads as fill value
                return
        if mask != 0:  # the Blosc filter was skipped for this chunk: let HDF5 decide
            self._read_filtered(i, out)
            return
        n = len(chunk)
        if n < _BLOSC_HEADER:
            raise self._corrupt(i, f"{n} bytes, shorter than a Blosc header")
        head = np.frombuffer(chunk, np.uint32, count=4)  # little-endian on every supported host
        nbytes, cbytes = int(head[1]), int(head[3])
        if nbytes != self.frame_nbytes or cbytes != n:
            raise self._corrupt(
                i,
                f"Blosc header says {nbytes} -> {cbytes} bytes, "
                f"expected {self.frame_nbytes} bytes from a {n}-byte chunk",
            )
        try:
            blosc2.decompress(chunk, dst=out)
        except (RuntimeError, ValueError, TypeError) as e:
            raise self._corrupt(i, f"Blosc decode failed: {_why(e)}") from e

    def read(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frame ``index`` (negative counts from the end); decoded into ``out`` when given."""
        i = self._index(index)
        out = self._check_out(out, self.frame_shape)
        self._read_into(i, out)
        return out

    def read_batch(
        self, indices: Iterable[int] | slice | range, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Frames ``indices`` as one (n, *frame_shape) array (``out`` reused when given)."""
        if isinstance(indices, slice):
            indices = range(*indices.indices(self.n_frames))
        idx: Sequence[int] = [self._index(i) for i in indices]
        out = self._check_out(out, (len(idx), *self.frame_shape))
        for k, i in enumerate(idx):
            self._read_into(i, out[k])
        return out

    def __iter__(self):
        for i in range(self.n_frames):
            yield self.read(i)


def _why(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg[:200] if msg else type(e).__name__
