"""What hpcproc knows about one scan file: read once, passed everywhere (ground floor).

``ScanInfo`` is a small, picklable value made by :mod:`hpcproc.formats` from any file hpcproc
reads (NeXus/HDF5 of several layouts, detector images, XAFS column files): the launcher, the
recipes' ``applies_to`` rules, the dispatcher and the LIMS adapter all take it, and Dask
workers receive it instead of frames. It names what the file holds by *role* (``frames``,
``mca``, ``energy``, ...): the layout that recognised the file maps each role to a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# Placeholders a recipe may use in `with` values and in str/path parameter defaults: {scan.file} ...
SCAN_FIELDS: tuple[str, ...] = ("file", "dir", "stem", "id", "beamline", "visit", "title")

# What a step may read, by role: ``{role.frames}`` in a recipe is the dataset the layout found.
ROLES: dict[str, str] = {
    "frames": "2-D detector frames, one per scan point",
    "mca": "fluorescence spectra per point: (points | ny, nx, channels, bins)",
    "calibration": "group holding energy_offset/energy_gain of the MCA (eV, eV per bin)",
    "energy": "beam energy per point (eV)",
    "i0": "incident intensity per point",
    "it": "transmitted intensity per point",
    "if": "fluorescence intensity per point",
    "angles": "rotation angle per projection (degrees)",
    "image_key": "NXtomo image_key per frame: 0 projection, 1 flat, 2 dark",
    "projections": "tomography projections",
    "flats": "flat (white) fields",
    "darks": "dark fields",
    "mask": "detector pixel mask (non-zero = masked)",
}
ROLE_PREFIX = "role."


def frame_count(shape: tuple[int, ...], frame_ndim: int) -> int:
    """Frames in a dataset of ``shape`` whose frames have ``frame_ndim`` dimensions: the
    product of the others, (N, h, w) -> N, (ny, nx, channels, bins) -> ny * nx."""
    n = 1
    for s in shape[: max(0, len(shape) - frame_ndim)]:
        n *= int(s)
    return n


@dataclass(frozen=True)
class DatasetInfo:
    """Shape and storage of one dataset of the scan (an HDF5 dataset, or what a non-HDF5
    format reads as one: an image series, a column)."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...] | None = None
    compression: str | None = None  # e.g. "blosc" (filter 32001), "gzip", None
    virtual: bool = False
    link: str | None = None  # "file.h5::/path" when reached through an external link


@dataclass(frozen=True)
class ScanInfo:
    path: Path  # absolute path of the scan file (the first file of an image series)
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
    format: str = "hdf5"  # hdf5 | image | xdi | columns
    layout: str = "diamond"  # the layout that mapped the roles (hpcproc.formats.layouts)
    roles: dict[str, str] = field(default_factory=dict)  # role -> dataset path
    missing_links: dict[str, str] = field(default_factory=dict)  # path -> file it points to
    warnings: tuple[str, ...] = ()  # what was read with a doubt (said, never hidden)
    files: tuple[str, ...] = ()  # an image series: every file, in scan order

    @property
    def n_points(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def metadata(self) -> dict[str, Any]:
        """Values for `{scan.*}` placeholders (keys are SCAN_FIELDS) and `{role.*}` ones."""
        meta: dict[str, Any] = {
            "file": str(self.path),
            "dir": str(self.path.parent),
            "stem": self.path.stem,
            "id": self.scan_id,
            "beamline": self.beamline,
            "visit": self.visit or "",
            "title": self.title,
        }
        meta.update({ROLE_PREFIX + role: path for role, path in self.roles.items()})
        return meta

    def missing_input(self, dataset: str) -> str | None:
        """Why ``dataset`` cannot be read from this scan, or None when it can."""
        if dataset in self.datasets:
            return None
        for path, target in self.missing_links.items():
            if dataset == path or dataset.startswith(path.rstrip("/") + "/"):
                return f"{dataset} is an external link to {target}, which is not there"
        return f"no dataset {dataset} in {self.path.name} (layout {self.layout})"
