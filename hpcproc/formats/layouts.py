"""Layouts of HDF5 scan files: how a file's structure maps to a scan shape, axes and roles.

A layout recognises a file from its structure (application definitions, NX classes, paths) and
says which dataset plays each role (``frames``, ``mca``, ``energy``, ``angles``, ...: see
:data:`hpcproc.scaninfo.ROLES`). Shipped: ``diamond`` (the Diamond scan layout, with
``/entry/diamond_scan``), ``gda`` (classic GDA NeXus: ``entry1``, groups without NX_class,
``scan_dimensions``), ``nxtomo`` (the NXtomo application definition), ``dxchange`` (APS Data
Exchange: ``/exchange``) and ``nexus`` (any NXentry, the last resort). Detection tries them in
that order; a recipe or ``--layout`` may name one instead.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from hpcproc.errors import ScanError
from hpcproc.formats.hdf5 import Walk, as_str, get, text
from hpcproc.scaninfo import DatasetInfo

# Detector names that say "fluorescence spectra" (an MCA), not "images".
_MCA_NAME = re.compile(r"xspress|xmap|mca|vortex|ketek|fluo|sdd", re.I)
# Groups named like position or counter electronics (DIAD's EtherCAT, PandA boxes) hold
# values per point even where their NXdata look like images.
_NOT_IMAGES = re.compile(r"ethercat|panda|pcomp|counter|timer|encoder|temp|current", re.I)
MIN_FRAME_SIDE = 16  # smaller 2-D data per point are spectra or ROIs, not detector images


@dataclass
class Found:
    """What a layout read from a file."""

    entry: h5py.Group | None  # where the scan's metadata fields are (title, start_time, ...)
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    axis_paths: dict[str, str | None]  # axis name -> dataset of its positions (None: none)
    roles: dict[str, str]
    finished: bool | None = None
    warnings: list[str] = field(default_factory=list)


class Layout(ABC):
    name: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def detect(self, f: h5py.File, w: Walk) -> bool:
        """True when the file has this layout's structure."""

    @abstractmethod
    def read(self, f: h5py.File, w: Walk, path: Path) -> Found:
        """The scan's shape, axes and roles; ScanError when the file lacks what it needs."""


# ---------------------------------------------------------------- helpers shared by layouts


def nx_class(obj: Any) -> str:
    try:
        return as_str(obj.attrs.get("NX_class", ""))
    except (OSError, RuntimeError, AttributeError):
        return ""


def entries(f: h5py.File) -> list[h5py.Group]:
    """The file's NXentry groups (``entry`` first), then groups named ``entry*`` without it."""
    found = [g for name in f if isinstance(g := get(f, name), h5py.Group)]
    nx = [g for g in found if nx_class(g) == "NXentry"]
    named = [g for g in found if g.name.lstrip("/").startswith("entry") and g not in nx]
    return sorted(nx, key=lambda g: g.name != "/entry") + named


def points_of(d: DatasetInfo, shape: tuple[int, ...], frame_ndim: int) -> bool:
    """Whether ``d`` holds one ``frame_ndim``-D item per point of a scan of ``shape``: as
    (points, ...) (up to the scan's points: a live scan's dataset grows) or as (*shape, ...);
    a scan of one point may also be one bare item."""
    if len(d.shape) < frame_ndim:
        return False
    n = int(np.prod(shape))
    lead = d.shape[: len(d.shape) - frame_ndim]
    if lead == shape or lead == (n,) or (len(lead) == 1 and lead[0] < n):  # live: grows to n
        return True
    return n == 1 and lead == ()


def _own_data(p: str) -> tuple[bool, bool, str]:
    """Sort key: a detector's own data (under an instrument, named data) before copies and
    the links GDA makes of it into each NXdata."""
    return ("/instrument/" not in p, not p.endswith("/data"), p)


def guess_roles(w: Walk, shape: tuple[int, ...]) -> dict[str, str]:
    """``frames`` (the largest 2-D frames per point, else a detector's data behind a link to
    a file not there), ``mca`` (a detector named like an MCA, spectra per point) with its
    ``calibration`` group, the frames' ``mask`` and ``image_key``."""
    roles: dict[str, str] = {}
    keys = sorted((p for p in w.datasets if p.endswith("/image_key")), key=_own_data)
    frames = _frames(w, shape) or _linked_frames(w, keys)
    if frames:
        roles["frames"] = frames
        group = frames.rsplit("/", 1)[0]
        if f"{group}/pixel_mask" in w.datasets:
            roles["mask"] = f"{group}/pixel_mask"
        if f"{group}/image_key" in w.datasets:  # a tomography detector keys its own frames
            keys.insert(0, f"{group}/image_key")
    if keys:
        roles["image_key"] = keys[0]
    if mca := _mca(w, shape):
        roles["mca"] = mca
        group = mca.rsplit("/", 1)[0]
        if f"{group}/energy_gain" in w.datasets:
            roles["calibration"] = group
    return roles


def _numeric(d: DatasetInfo) -> bool:
    return np.dtype(d.dtype).kind in "uif"


def _frames(w: Walk, shape: tuple[int, ...]) -> str | None:
    """The largest 2-D frames, one per point, of a detector not named like an MCA."""
    found = [
        (int(np.prod(d.shape[-2:])), path)
        for path, d in w.datasets.items()
        if _numeric(d)
        and len(d.shape) >= 2
        and points_of(d, shape, 2)
        and min(d.shape[-2:]) >= MIN_FRAME_SIDE
        and not _MCA_NAME.search(path)
    ]
    if not found:
        return None
    size = max(s for s, _ in found)
    return min((p for s, p in found if s == size), key=_own_data)


def _linked_frames(w: Walk, keys: list[str]) -> str | None:
    """A detector's data behind a link to a file not there (its shape is unknown): the one
    an NXdata of the highest rank shows, not a position box, an NXdetector, keyed frames."""
    beside = {k.rsplit("/", 1)[0] for k in keys}

    def rank(p: str) -> tuple:
        group = p.rsplit("/", 1)[0]
        return (
            -_linked_rank(w, p),
            bool(_NOT_IMAGES.search(group.rsplit("/", 1)[-1])),
            group not in w.detectors,
            group not in beside,
            *_own_data(p),
        )

    linked = [p for p in w.missing_links if p.endswith("/data") and not _MCA_NAME.search(p)]
    return min(linked, key=rank) if linked else None


def _mca(w: Walk, shape: tuple[int, ...]) -> str | None:
    """Spectra per point in a group named like an MCA: as the scan's shape (GDA maps), then
    one per point, then a live one still growing."""
    n = int(np.prod(shape))
    found = [
        p
        for p, d in w.datasets.items()
        if _numeric(d) and _MCA_NAME.search(p.rsplit("/", 1)[0]) and points_of(d, shape, 2)
    ]
    return min(
        found,
        key=lambda p: (
            w.datasets[p].shape[:-2] != shape,
            w.datasets[p].shape[:-2] != (n,),
            *_own_data(p),
        ),
        default=None,
    )


_XAFS_NAMES = {
    "energy": re.compile(r"(^|/)(energy|energy/value|qexafs_energy|dcm_energy|mono_energy)$", re.I),
    "i0": re.compile(r"(^|/)i0$", re.I),
    "it": re.compile(r"(^|/)(it|i1|itrans)$", re.I),
    "if": re.compile(r"(^|/)(if|iff|ifluo|ff)$", re.I),
}


def _linked_rank(w: Walk, path: str) -> int:
    """The rank an NXdata's @axes give to data behind the same missing link as ``path``
    (the data cannot be looked at: its NXdata says whether it is images)."""
    target = w.missing_links.get(path)
    return max(
        (r for q, r in w.ranks.items() if q == path or w.missing_links.get(q) == target),
        default=0,
    )


def xafs_roles(w: Walk, n_points: int) -> dict[str, str]:
    """``energy``, ``i0``, ``it``, ``if``: 1-D datasets of the scan's length named as beamlines
    name them (``energy/value``, ``I0``, ``It``, ``If``/``FF``)."""
    roles: dict[str, str] = {}
    for path, d in sorted(w.datasets.items(), key=lambda kv: _own_data(kv[0])):
        if len(d.shape) != 1 or d.shape[0] != n_points or not _numeric(d):
            continue
        for role, pattern in _XAFS_NAMES.items():
            if role not in roles and pattern.search(path.removeprefix("/")):
                roles[role] = path
    return roles if {"energy", "i0"} <= roles.keys() else {}


def axis_path(entry: h5py.Group, axis: str, extra: list[str] = ()) -> str | None:
    """The dataset of an axis's positions: the sample's, the instrument's, or an NXdata's."""
    candidates = [f"sample/{axis}", f"instrument/{axis}/value", f"instrument/{axis}", *extra]
    default = as_str(entry.attrs.get("default", ""))
    if default:
        candidates.append(f"{default}/{axis}")
    for name in entry:
        g = get(entry, name)
        if isinstance(g, h5py.Group) and nx_class(g) in ("NXdata", ""):
            candidates.append(f"{name}/{axis}")
    for c in candidates:
        if c in entry:  # a link, even a dangling one: the caller says what it points to
            return f"{entry.name}/{c}"
    return None


def nxdata_axes(entry: h5py.Group, n: int) -> tuple[str, ...]:
    """Scan axis names from the default NXdata's @axes, else dim0, dim1, ..."""
    default = as_str(entry.attrs.get("default", ""))
    g = get(entry, default) if default else None
    if isinstance(g, h5py.Group):
        raw = g.attrs.get("axes")
        if raw is not None:
            names = [as_str(v) for v in np.atleast_1d(raw)][:n]
            if len(names) == n and all(v and v != "." for v in names):
                return tuple(names)
    return ("point",) if n == 1 else tuple(f"dim{i}" for i in range(n))


# ---------------------------------------------------------------- the layouts


class DiamondScan(Layout):
    name = "diamond"
    description = "Diamond scan layout: /entry/diamond_scan (scan_shape, scan_axes, keys)"

    def detect(self, f: h5py.File, w: Walk) -> bool:
        return any(p.endswith("/diamond_scan/scan_shape") for p in w.datasets)

    def read(self, f: h5py.File, w: Walk, path: Path) -> Found:
        entry = next(e for e in entries(f) if isinstance(get(e, "diamond_scan"), h5py.Group))
        ds = get(entry, "diamond_scan")
        shape = tuple(int(v) for v in np.atleast_1d(ds["scan_shape"][()]))
        axes_ds = get(ds, "scan_axes")
        axes = (
            tuple(as_str(v) for v in np.atleast_1d(axes_ds[()]))
            if isinstance(axes_ds, h5py.Dataset)
            else ()
        )
        if len(axes) != len(shape):
            axes = nxdata_axes(entry, len(shape))
        fin = get(ds, "scan_finished")
        finished = (
            bool(np.atleast_1d(fin[()]).ravel()[0]) if isinstance(fin, h5py.Dataset) else None
        )
        roles = guess_roles(w, shape) | xafs_roles(w, int(np.prod(shape)))
        return Found(entry, shape, axes, {a: axis_path(entry, a) for a in axes}, roles, finished)


class ClassicGda(Layout):
    name = "gda"
    description = "classic GDA NeXus: entry1, groups often without NX_class, scan_dimensions"

    def detect(self, f: h5py.File, w: Walk) -> bool:
        return self._entry(f) is not None

    @staticmethod
    def _entry(f: h5py.File) -> h5py.Group | None:
        """The entry with scan_dimensions, else an ``entry1`` without NX_class (GDA's own)."""
        found = entries(f)
        for e in found:
            if isinstance(get(e, "scan_dimensions"), h5py.Dataset):
                return e
        return next((e for e in found if e.name == "/entry1" and not nx_class(e)), None)

    def read(self, f: h5py.File, w: Walk, path: Path) -> Found:
        entry = self._entry(f)
        assert entry is not None
        warnings: list[str] = []
        if isinstance(get(entry, "scan_dimensions"), h5py.Dataset):
            shape = tuple(int(v) for v in np.atleast_1d(entry["scan_dimensions"][()]))
        else:
            shape = _counters_shape(w, entry.name)
            warnings.append(f"no scan_dimensions: scan shape {shape} from the scan's counters")
        axes = self._axes(entry, shape, w)
        if axes is None:
            axes = nxdata_axes(entry, len(shape))
            warnings.append(f"scan axes not found (scan_command, NXdata): named {', '.join(axes)}")
        roles = guess_roles(w, shape) | xafs_roles(w, int(np.prod(shape)))
        paths = {a: axis_path(entry, a, self._axis_candidates(entry, a)) for a in axes}
        return Found(entry, shape, axes, paths, roles, None, warnings)

    @staticmethod
    def _axis_candidates(entry: h5py.Group, axis: str) -> list[str]:
        """GDA puts each scannable's positions in an NXpositioner (or plain) group under
        ``instrument`` and links them into each NXdata: ``instrument/<name>/<axis>``."""
        inst = get(entry, "instrument")
        out = []
        if isinstance(inst, h5py.Group):
            for name in inst:
                g = get(inst, name)
                if isinstance(g, h5py.Group) and axis in g:
                    out.append(f"instrument/{name}/{axis}")
        return out

    @staticmethod
    def _axes(entry: h5py.Group, shape: tuple[int, ...], w: Walk) -> tuple[str, ...] | None:
        """Axis names from datasets marked @axis=k (old NeXus style, GDA), else the
        scannables of ``scan_command`` (``scan eta 10 16 0.1 pil 1``) that have positions."""
        marked: dict[int, str] = {}
        prefix = entry.name + "/"
        for p in sorted(w.datasets):
            if not p.startswith(prefix):
                continue
            d = get(entry, p[len(prefix) :])
            if not isinstance(d, h5py.Dataset):
                continue
            a = d.attrs.get("axis")
            primary = d.attrs.get("primary")
            if a is None:
                continue
            try:
                k = int(as_str(a).split(",")[0])
            except ValueError:
                continue
            name = p.rsplit("/", 1)[1]
            if 1 <= k <= len(shape) and (k not in marked or (primary is not None)):
                marked[k] = name
        if len(marked) == len(shape):
            return tuple(marked[k] for k in sorted(marked))
        words = (text(entry, "scan_command") or "").split()
        names = [
            v
            for v in words[1:]
            if re.fullmatch(r"[A-Za-z_]\w*", v) and any(p.endswith("/" + v) for p in w.datasets)
        ]
        if len(names) >= len(shape):
            return tuple(names[: len(shape)])
        return None


class NXtomo(Layout):
    name = "nxtomo"
    description = "NXtomo application definition: image_key, rotation_angle"

    def detect(self, f: h5py.File, w: Walk) -> bool:
        return self._entry(f) is not None

    @staticmethod
    def _entry(f: h5py.File) -> h5py.Group | None:
        for e in entries(f):
            if (text(e, "definition") or "").lower() == "nxtomo":
                return e
            for name in e:  # DIAD, I12, I13 put the NXtomo subentry inside the scan's entry
                g = get(e, name)
                if isinstance(g, h5py.Group) and (text(g, "definition") or "").lower() == "nxtomo":
                    return g
        return None

    def read(self, f: h5py.File, w: Walk, path: Path) -> Found:
        entry = self._entry(f)
        assert entry is not None
        e = entry.name
        roles: dict[str, str] = {}
        for role, names in (
            ("frames", ("instrument/detector/data", "data/data")),
            ("image_key", ("instrument/detector/image_key", "data/image_key")),
            ("angles", ("sample/rotation_angle", "data/rotation_angle")),
        ):
            for name in names:
                if name in entry:  # present, or a link (perhaps dangling: said by the reader)
                    roles[role] = f"{e}/{name}"
                    break
        if "frames" not in roles:
            raise ScanError(f"{path}: NXtomo entry {e} has no instrument/detector/data")
        roles["projections"] = roles["frames"]
        # frames behind a dangling link have no shape: the image keys and angles still count
        counted = [
            w.datasets[r]
            for k in ("frames", "image_key", "angles")
            if (r := roles.get(k)) in w.datasets
        ]
        n = counted[0].shape[0] if counted and counted[0].shape else 0
        return Found(
            entry.parent if entry.parent.name != "/" else entry,
            (n,),
            ("rotation_angle",),
            {"rotation_angle": roles.get("angles")},
            roles,
            None if e.count("/") > 1 else True,
        )


class DataExchange(Layout):
    name = "dxchange"
    description = "APS Data Exchange: /exchange/data, data_white, data_dark, theta"

    def detect(self, f: h5py.File, w: Walk) -> bool:
        return "/exchange/data" in w.datasets

    def read(self, f: h5py.File, w: Walk, path: Path) -> Found:
        roles = {"frames": "/exchange/data", "projections": "/exchange/data"}
        for role, name in (("flats", "data_white"), ("darks", "data_dark"), ("angles", "theta")):
            if f"/exchange/{name}" in w.datasets:
                roles[role] = f"/exchange/{name}"
        n = w.datasets["/exchange/data"].shape[0]
        warnings = [] if "angles" in roles else ["no /exchange/theta: angles must be given"]
        meta = get(f, "measurement")
        return Found(
            meta if isinstance(meta, h5py.Group) else None,
            (n,),
            ("theta",),
            {"theta": roles.get("angles")},
            roles,
            True,
            warnings,
        )


class GenericNexus(Layout):
    name = "nexus"
    description = "any NeXus file with an NXentry: the default plot's signal sets the shape"

    def detect(self, f: h5py.File, w: Walk) -> bool:
        return bool(entries(f))

    def read(self, f: h5py.File, w: Walk, path: Path) -> Found:
        entry = entries(f)[0]
        sig = _signal_dataset(entry)
        warnings = []
        if sig is None:
            raise ScanError(f"{path}: no scan shape: no scan_shape, scan_dimensions or datasets")
        if sig.ndim == 2 and min(sig.shape) >= MIN_FRAME_SIDE:  # one image, not one per row
            shape: tuple[int, ...] = (1,)
        else:
            shape = (int(sig.shape[0]),)
        warnings.append(f"no scan_shape or scan_dimensions: shape {shape} taken from {sig.name}")
        axes = nxdata_axes(entry, len(shape))
        roles = guess_roles(w, shape) | xafs_roles(w, int(np.prod(shape)))
        return Found(
            entry, shape, axes, {a: axis_path(entry, a) for a in axes}, roles, None, warnings
        )


def _counters_shape(w: Walk, entry: str) -> tuple[int, ...]:
    """The shape most numeric datasets of up to two dimensions share: one value per point of
    the scan's counters and positions (I0, It, motor readbacks)."""
    counts: dict[tuple[int, ...], int] = {}
    for path, d in w.datasets.items():
        inside = path.startswith(entry + "/") and np.dtype(d.dtype).kind in "uif"
        if inside and 1 <= len(d.shape) <= 2 and np.prod(d.shape) > 1:
            counts[d.shape] = counts.get(d.shape, 0) + 1
    if not counts:
        raise ScanError(f"{entry}: no scan_dimensions and no counters to take the shape from")
    return max(counts, key=lambda k: (counts[k], len(k)))


def _signal_dataset(entry: h5py.Group) -> h5py.Dataset | None:
    """The default plot's signal, else the first NXdetector 'data', else the first dataset."""
    default = as_str(entry.attrs.get("default", ""))
    if default:
        g = get(entry, default)
        if isinstance(g, h5py.Group):
            d = get(g, as_str(g.attrs.get("signal", "data")))
            if isinstance(d, h5py.Dataset) and d.ndim >= 1:
                return d
    inst = get(entry, "instrument")
    if isinstance(inst, h5py.Group):
        for name in inst:
            g = get(inst, name)
            if isinstance(g, h5py.Group) and nx_class(g) == "NXdetector":
                d = get(g, "data")
                if isinstance(d, h5py.Dataset) and d.ndim >= 1:
                    return d
    found: list[h5py.Dataset] = []

    def first(name: str, obj: Any) -> bool | None:
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 1 and obj.shape[0] > 0:
            found.append(obj)
            return True
        return None

    entry.visititems(first)
    return found[0] if found else None


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (NXtomo(), DataExchange(), DiamondScan(), ClassicGda(), GenericNexus())
}


def pick(f: h5py.File, w: Walk, path: Path, name: str | None = None) -> Layout:
    """The layout named, or the first that recognises the file."""
    if name is not None:
        if name not in LAYOUTS:
            raise ScanError(f"unknown layout {name!r} (layouts: {', '.join(LAYOUTS)})")
        return LAYOUTS[name]
    for layout in LAYOUTS.values():
        if layout.detect(f, w):
            return layout
    raise ScanError(
        f"{path}: an HDF5 file of no layout hpcproc knows (no NXentry, /exchange or "
        f"scan_dimensions; layouts: {', '.join(LAYOUTS)})"
    )
