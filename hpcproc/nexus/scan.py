"""What hpcproc knows about one scan file: read once from its NeXus metadata, passed everywhere.

``ScanInfo`` is a small, picklable value: the launcher, the recipes' ``applies_to`` rules, the
dispatcher and the LIMS adapter all take it, and Dask workers receive it instead of frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcproc.errors import ScanError

# Placeholders a recipe may use in `with` values and in str/path parameter defaults: {scan.file} ...
SCAN_FIELDS: tuple[str, ...] = ("file", "dir", "stem", "id", "beamline", "visit", "title")


@dataclass(frozen=True)
class DatasetInfo:
    """Shape and storage of one HDF5 dataset of the scan."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...] | None = None
    compression: str | None = None  # e.g. "blosc" (filter 32001), "gzip", None
    virtual: bool = False


@dataclass(frozen=True)
class ScanInfo:
    path: Path  # absolute path of the scan file
    scan_id: str  # e.g. "i18-000001" (beamline + scan number)
    beamline: str  # e.g. "i18"
    visit: str | None  # e.g. "cm12345-1"
    title: str
    scan_command: str
    start_time: datetime | None
    end_time: datetime | None
    shape: tuple[int, ...]  # scan shape, slowest axis first, e.g. (ny, nx)
    axes: tuple[str, ...]  # scan axis names in the same order, e.g. ("y", "x")
    axis_values: dict[str, tuple[float, ...]]  # grid values of each scan axis (len = shape[i])
    axis_units: dict[str, str]
    finished: bool  # end-of-scan marker seen
    datasets: dict[str, DatasetInfo] = field(default_factory=dict)  # every dataset, by path
    nx_classes: frozenset[str] = frozenset()  # NX_class values present anywhere in the file

    @property
    def n_points(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def metadata(self) -> dict[str, Any]:
        """Values for `{scan.*}` placeholders (keys are SCAN_FIELDS)."""
        return {
            "file": str(self.path),
            "dir": str(self.path.parent),
            "stem": self.path.stem,
            "id": self.scan_id,
            "beamline": self.beamline,
            "visit": self.visit or "",
            "title": self.title,
        }


# --- reading ---------------------------------------------------------------------------------
# HDF5 filter ids -> the short names used in DatasetInfo.compression (shuffle/fletcher32 skipped)
FILTER_NAMES: dict[int, str] = {
    1: "gzip",
    4: "szip",
    32000: "lzf",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32013: "zfp",
    32015: "zstd",
    32017: "sz",
    32024: "sz3",
    32026: "blosc2",
}
_NOT_COMPRESSION = {2, 3, 5, 6}  # shuffle, fletcher32, nbit, scaleoffset


def open_h5(path: str | Path) -> tuple[h5py.File, bool]:
    """Open an HDF5 scan read-only: ``(file, swmr)``; ScanError (one line) when impossible.

    A plain open comes first: it is what a finished scan needs, and it fails fast both on a
    truncated file and on a file a SWMR writer still holds ("already open for write"), in which
    case the file is reopened in SWMR-read mode. Not the other way round: SWMR-read skips HDF5's
    end-of-file check, and listing a group of a truncated file that way retried metadata reads
    for minutes (> 200 s). A truncated file that a crashed SWMR writer left flagged "open for
    SWMR write" still goes the SWMR way: there HDF5 gives no cheap truncation check (the
    superblock's end-of-file address is not updated in SWMR mode).
    """
    p = Path(path)
    if not p.exists():
        raise ScanError(f"{p}: scan file not found")
    if p.is_dir():
        raise ScanError(f"{p}: is a directory, not a scan file")
    try:
        return h5py.File(p, "r"), False
    except OSError as e:
        first = e
    reason = _why(first)
    truncated = "truncated" in reason or "signature" in reason
    # A live SWMR writer extends the file between its flushes, so a plain open may see it
    # "truncated" for a moment: the superblock's SWMR-write flag tells that case apart.
    if truncated and not _swmr_write_flag(p):
        raise ScanError(f"{p}: not a readable HDF5 file (truncated or corrupt?): {reason}")
    try:
        return h5py.File(p, "r", swmr=True), True
    except OSError as e:
        raise ScanError(f"{p}: not a readable HDF5 file (truncated or corrupt?): {reason}") from e


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SWMR_WRITE = 0x04  # superblock v2+ file consistency flag: opened for SWMR writing


def _swmr_write_flag(path: Path) -> bool:
    """True when the file's superblock (v2+, at offset 0) says a SWMR writer has it open."""
    try:
        with open(path, "rb") as fd:
            head = fd.read(12)
    except OSError:
        return False
    return (
        len(head) == 12
        and head[:8] == _HDF5_SIGNATURE
        and head[8] >= 2
        and bool(head[11] & _SWMR_WRITE)
    )


@contextmanager
def open_scan_file(path: str | Path) -> Iterator[h5py.File]:
    """``with open_scan_file(p) as f``: :func:`open_h5`, closed on leaving the block."""
    f, _swmr = open_h5(path)
    try:
        yield f
    finally:
        f.close()


def _why(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg[:200] if msg else type(e).__name__


def _str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        if v.size == 0:
            return ""
        return _str(v.ravel()[0])
    return str(v)


def _get(g: h5py.Group, name: str) -> Any:
    """Dataset or group at ``name`` or None (also None for dangling soft/external links)."""
    try:
        return g.get(name)
    except (KeyError, OSError, RuntimeError, ValueError):
        return None


def _text(g: h5py.Group, name: str) -> str | None:
    d = _get(g, name)
    if not isinstance(d, h5py.Dataset):
        return None
    try:
        return _str(d[()]).strip()
    except (OSError, TypeError, ValueError):
        return None


def _time(g: h5py.Group, name: str) -> datetime | None:
    t = _text(g, name)
    if not t:
        return None
    try:
        return datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        return None


def _compression(d: h5py.Dataset) -> str | None:
    try:
        plist = d.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code, _flags, _values, name = plist.get_filter(i)
            if code in _NOT_COMPRESSION:
                continue
            return FILTER_NAMES.get(code) or _str(name) or f"filter-{code}"
    except (OSError, RuntimeError, ValueError):
        pass
    return None


def _dataset_info(name: str, d: h5py.Dataset) -> DatasetInfo:
    try:
        virtual = bool(d.is_virtual)
    except (OSError, RuntimeError):
        virtual = False
    return DatasetInfo(
        path=name,
        shape=tuple(int(s) for s in d.shape) if d.shape is not None else (),
        dtype=str(d.dtype),
        chunks=tuple(int(c) for c in d.chunks) if d.chunks else None,
        compression=_compression(d),
        virtual=virtual,
    )


def _walk(f: h5py.File) -> tuple[dict[str, DatasetInfo], set[str]]:
    """Every dataset by every path that reaches it (hard links too), and all NX_class values."""
    datasets: dict[str, DatasetInfo] = {}
    classes: set[str] = set()
    nx = f.attrs.get("NX_class")
    if nx is not None:
        classes.add(_str(nx))

    def visit(name: str, _link: Any) -> None:
        obj = _get(f, name)
        if obj is None:
            return
        nxc = obj.attrs.get("NX_class") if obj.attrs is not None else None
        if nxc is not None:
            classes.add(_str(nxc))
        if isinstance(obj, h5py.Dataset):
            datasets["/" + name] = _dataset_info("/" + name, obj)

    if hasattr(f, "visititems_links"):  # h5py >= 3.11: visits hard links to shared objects too
        f.visititems_links(visit)
    else:  # pragma: no cover
        f.visititems(lambda name, obj: visit(name, None))
    return datasets, classes


def _entry(f: h5py.File, path: Path) -> h5py.Group:
    e = _get(f, "entry")
    if isinstance(e, h5py.Group):
        return e
    for name in f:
        g = _get(f, name)
        if isinstance(g, h5py.Group) and _str(g.attrs.get("NX_class", "")) == "NXentry":
            return g
    raise ScanError(f"{path}: no /entry (NXentry) group: not a NeXus scan")


def _signal_dataset(entry: h5py.Group) -> h5py.Dataset | None:
    """The default plot's signal, else the first NXdetector 'data', else the first dataset."""
    default = _str(entry.attrs.get("default", ""))
    if default:
        g = _get(entry, default)
        if isinstance(g, h5py.Group):
            d = _get(g, _str(g.attrs.get("signal", "data")))
            if isinstance(d, h5py.Dataset) and d.ndim >= 1:
                return d
    found: list[h5py.Dataset] = []

    def first(name: str, obj: Any) -> bool | None:
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 1 and obj.shape[0] > 0:
            found.append(obj)
            return True
        return None

    inst = _get(entry, "instrument")
    if isinstance(inst, h5py.Group):
        for name in inst:
            g = _get(inst, name)
            if isinstance(g, h5py.Group) and _str(g.attrs.get("NX_class", "")) == "NXdetector":
                d = _get(g, "data")
                if isinstance(d, h5py.Dataset) and d.ndim >= 1:
                    return d
    entry.visititems(first)
    return found[0] if found else None


def _axis_positions(entry: h5py.Group, axis: str) -> h5py.Dataset | None:
    candidates = [f"sample/{axis}", f"instrument/{axis}/value", f"instrument/{axis}"]
    default = _str(entry.attrs.get("default", ""))
    if default:
        candidates.append(f"{default}/{axis}")
    for name in entry:
        g = _get(entry, name)
        if isinstance(g, h5py.Group) and _str(g.attrs.get("NX_class", "")) == "NXdata":
            candidates.append(f"{name}/{axis}")
    for c in candidates:
        d = _get(entry, c)
        if isinstance(d, h5py.Dataset) and d.ndim >= 1 and np.issubdtype(d.dtype, np.number):
            return d
    return None


def _grid_values(d: h5py.Dataset, shape: tuple[int, ...], k: int) -> tuple[float, ...]:
    """Grid values of axis ``k``: positions along that axis with every other index at 0."""
    n_points = int(np.prod(shape))
    p = np.asarray(d[()], dtype=float)
    if p.size == shape[k] and p.size != n_points:
        return tuple(float(v) for v in p.ravel())
    flat = np.full(n_points, np.nan)
    flat[: min(p.size, n_points)] = p.ravel()[:n_points]
    grid = flat.reshape(shape)
    index = tuple(slice(None) if i == k else 0 for i in range(len(shape)))
    return tuple(float(v) for v in grid[index])


def read_scan_info(path: str | Path) -> ScanInfo:
    """Read a NeXus scan's metadata into a ScanInfo; ScanError (one line) when it cannot."""
    p = Path(path).absolute()
    with open_scan_file(p) as f:
        try:
            return _read(f, p)
        except ScanError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
            raise ScanError(f"{p}: cannot read scan metadata: {_why(e)}") from e


def _read(f: h5py.File, p: Path) -> ScanInfo:
    entry = _entry(f, p)
    e = entry.name

    beamline = _text(entry, "instrument/name")
    if not beamline:
        head, sep, tail = p.stem.partition("-")
        if sep and head and tail.isdigit():
            beamline = head
        else:
            raise ScanError(f"{p}: missing field {e}/instrument/name (beamline)")
    number = _text(entry, "entry_identifier")
    scan_id = f"{beamline}-{int(number):06d}" if number and number.isdigit() else p.stem
    visit = _text(entry, "experiment_identifier") or None
    scan_command = _text(entry, "scan_command") or ""
    title = _text(entry, "title") or scan_command

    datasets, classes = _walk(f)

    shape: tuple[int, ...] | None = None
    axes: tuple[str, ...] | None = None
    finished: bool | None = None
    ds = _get(entry, "diamond_scan")
    if isinstance(ds, h5py.Group):
        s = _get(ds, "scan_shape")
        if isinstance(s, h5py.Dataset):
            shape = tuple(int(v) for v in np.atleast_1d(s[()]))
        a = _get(ds, "scan_axes")
        if isinstance(a, h5py.Dataset):
            axes = tuple(_str(v) for v in np.atleast_1d(a[()]))
        fin = _get(ds, "scan_finished")
        if isinstance(fin, h5py.Dataset):
            finished = bool(np.atleast_1d(fin[()]).ravel()[0])
    if shape is None:
        sig = _signal_dataset(entry)
        if sig is None:
            raise ScanError(f"{p}: missing field {e}/diamond_scan/scan_shape and no datasets")
        shape, axes = (int(sig.shape[0]),), ("point",)
    if axes is None or len(axes) != len(shape):
        axes = _nxdata_axes(entry, len(shape))
    if finished is None:  # no scan_finished: a non-empty end_time (live writers pre-create it)
        finished = bool(_text(entry, "end_time"))

    axis_values: dict[str, tuple[float, ...]] = {}
    axis_units: dict[str, str] = {}
    for k, a in enumerate(axes):
        d = _axis_positions(entry, a)
        if d is None:
            axis_values[a] = tuple(float(i) for i in range(shape[k]))
            axis_units[a] = ""
        else:
            axis_values[a] = _grid_values(d, shape, k)
            axis_units[a] = _str(d.attrs.get("units", ""))

    return ScanInfo(
        path=p,
        scan_id=scan_id,
        beamline=beamline,
        visit=visit,
        title=title,
        scan_command=scan_command,
        start_time=_time(entry, "start_time"),
        end_time=_time(entry, "end_time"),
        shape=shape,
        axes=axes,
        axis_values=axis_values,
        axis_units=axis_units,
        finished=finished,
        datasets=datasets,
        nx_classes=frozenset(classes),
    )


def _nxdata_axes(entry: h5py.Group, n: int) -> tuple[str, ...]:
    """Scan axis names from the default NXdata's @axes, else dim0, dim1, ..."""
    default = _str(entry.attrs.get("default", ""))
    g = _get(entry, default) if default else None
    if isinstance(g, h5py.Group):
        raw = g.attrs.get("axes")
        if raw is not None:
            names = [_str(v) for v in np.atleast_1d(raw)][:n]
            if len(names) == n and all(v and v != "." for v in names):
                return tuple(names)
    return ("point",) if n == 1 else tuple(f"dim{i}" for i in range(n))
