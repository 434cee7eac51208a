"""HDF5 files as hpcproc reads them: opening (plain, or SWMR while a writer holds the file),
small text fields, and a walk of every dataset with its storage and its external links.

The layouts (:mod:`hpcproc.formats.layouts`) read the scan's structure from what this gives.
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
from hpcproc.scaninfo import DatasetInfo

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
    reason = why(first)
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


def why(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg[:200] if msg else type(e).__name__


def as_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        if v.size == 0:
            return ""
        return as_str(v.ravel()[0])
    return str(v)


def get(g: h5py.Group, name: str) -> Any:
    """Dataset or group at ``name`` or None (also None for dangling soft/external links)."""
    try:
        return g.get(name)
    except (KeyError, OSError, RuntimeError, ValueError):
        return None


def text(g: h5py.Group, name: str) -> str | None:
    d = get(g, name)
    if not isinstance(d, h5py.Dataset):
        return None
    try:
        return as_str(d[()]).strip()
    except (OSError, TypeError, ValueError):
        return None


def time_field(g: h5py.Group, name: str) -> datetime | None:
    t = text(g, name)
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
            return FILTER_NAMES.get(code) or as_str(name) or f"filter-{code}"
    except (OSError, RuntimeError, ValueError):
        pass
    return None


def dataset_info(name: str, d: h5py.Dataset, link: str | None = None) -> DatasetInfo:
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
        link=link,
    )


@dataclass
class Walk:
    """Everything reachable in a file: datasets by every path that reaches them (hard links
    too), NX_class values, and external links whose file is not there (path -> file::path)."""

    datasets: dict[str, DatasetInfo] = field(default_factory=dict)
    classes: set[str] = field(default_factory=set)
    missing_links: dict[str, str] = field(default_factory=dict)
    detectors: set[str] = field(default_factory=set)  # paths of NXdetector groups
    ranks: dict[str, int] = field(default_factory=dict)  # NXdata signal -> rank its @axes say


def walk(f: h5py.File) -> Walk:
    w = Walk()
    nx = f.attrs.get("NX_class")
    if nx is not None:
        w.classes.add(as_str(nx))
    base = Path(f.filename).parent

    def visit(name: str, link: Any) -> None:
        path = "/" + name
        target = None
        if isinstance(link, h5py.ExternalLink):
            target = f"{link.filename}::{link.path}"
        obj = get(f, name)
        if obj is None:
            if isinstance(link, h5py.ExternalLink):
                missing = Path(link.filename)
                missing = missing if missing.is_absolute() else base / missing
                w.missing_links[path] = str(missing) if not missing.exists() else target
            return
        nxc = obj.attrs.get("NX_class") if obj.attrs is not None else None
        if nxc is not None:
            w.classes.add(as_str(nxc))
            if as_str(nxc) == "NXdetector":
                w.detectors.add(path)
            if as_str(nxc) == "NXdata" and obj.attrs.get("signal") is not None:
                axes = obj.attrs.get("axes")
                rank = 0 if axes is None else np.atleast_1d(axes).size
                w.ranks[f"{path}/{as_str(obj.attrs['signal'])}"] = int(rank)
        if isinstance(obj, h5py.Dataset):
            w.datasets[path] = dataset_info(path, obj, target)

    f.visititems_links(visit)  # h5py >= 3.11: visits hard links to shared objects too
    return w
