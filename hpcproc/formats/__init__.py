"""Reading the files scientists bring: formats and layouts, shared by workers, launcher, web
and ``hpcproc inspect``.

``read_scan_info(path)`` tells the format from the file's first bytes (HDF5, a detector image
fabio reads, XDI, SPEC, column text), reads it through that format's library, and for HDF5 picks the
layout that maps its structure to roles (:mod:`hpcproc.formats.layouts`). Every failure is a
:class:`~hpcproc.errors.ScanError` of one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

from hpcproc.errors import ScanError
from hpcproc.formats.metadata import Overrides
from hpcproc.formats.readers import Frames, open_frames, read_array
from hpcproc.formats.sniff import READS, sniff
from hpcproc.scaninfo import ScanInfo

__all__ = ["READS", "Frames", "Overrides", "open_frames", "read_array", "read_scan_info", "sniff"]


def read_scan_info(
    path: str | Path,
    layout: str | None = None,
    *,
    visit: str | None = None,
    beamline: str | None = None,
) -> ScanInfo:
    """What the scan file at ``path`` holds; ``layout`` names one instead of detecting it;
    ``visit`` and ``beamline`` are what a person said, over what the file says."""
    p = Path(path).expanduser().absolute()
    said = Overrides(visit=visit, beamline=beamline)
    if any(c in p.name for c in "*?["):  # a numbered image series, as a glob pattern
        from hpcproc.formats.images import read_image_scan

        return read_image_scan(p, said)
    if not p.exists():
        raise ScanError(f"{p}: scan file not found")
    if p.is_dir():
        raise ScanError(f"{p}: is a directory, not a scan file")
    kind = sniff(p)
    if kind == "hdf5":
        from hpcproc.formats.hdf5_scan import read_hdf5_scan

        return read_hdf5_scan(p, layout, said)
    own = {"image": "image", "xdi": "xafs", "spec": "xafs", "columns": "xafs"}.get(kind or "")
    if layout is not None and own is not None and layout != own:
        raise ScanError(f"{p}: layout {layout!r} is for HDF5 files; this file's is {own!r}")
    if kind == "image":
        from hpcproc.formats.images import read_image_scan

        return read_image_scan(p, said)
    if kind in ("xdi", "spec", "columns"):
        from hpcproc.formats.columns import read_column_scan

        return read_column_scan(p, kind, said)
    if p.stat().st_size == 0:
        raise ScanError(f"{p}: empty file (a scan not written yet?)")
    raise ScanError(f"{p}: not a format hpcproc reads (it reads: {READS})")
