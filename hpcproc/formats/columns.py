"""XAFS column files: XDI (xraylarch's ``read_xdi``), plain column text (``read_ascii``) and
SPEC files (silx's ``SpecFile``; the first scan of the file).

Each column is a dataset ``/columns/<label>`` of the scan; the ``xafs`` layout maps the usual
labels to the roles ``energy``, ``i0``, ``it``, ``if`` and ``mu`` (others are named with
``--param i0=/columns/Mon``). A file is an energy scan: one point per row. Energies recorded
in keV (SPEC's ``ZapEnergy``) are also given in eV, as ``/columns/<label>_eV``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcproc.errors import ScanError
from hpcproc.formats.metadata import NO_OVERRIDES, Overrides, choose_beamline, choose_visit
from hpcproc.scaninfo import DatasetInfo, ScanInfo

PREFIX = "/columns/"
KEV_BELOW = 200.0  # an energy column whose values all lie below this is in keV
_ROLE_LABELS: dict[str, re.Pattern[str]] = {
    "energy": re.compile(r"^e$|^ev$|energy|^enc$", re.I),
    "i0": re.compile(r"^(i0|io$|i_0|mon$|monitor)", re.I),
    "it": re.compile(r"^(itrans|it$|it_|i1|i_t)", re.I),
    "if": re.compile(r"^(ifluor|if$|iff|ifluo|fluo|ff$)", re.I),
    "mu": re.compile(r"^(mu|mutrans|xmu|mu_trans)$", re.I),
}


@dataclass
class Table:
    """The columns of a file, by label, and what its header says."""

    columns: dict[str, np.ndarray]
    beamline: str | None = None
    title: str = ""
    warnings: list[str] = field(default_factory=list)


def _larch(path: Path, kind: str) -> Table:
    from larch.io import read_ascii, read_xdi

    try:
        g = read_xdi(str(path)) if kind == "xdi" else read_ascii(str(path))
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise ScanError(f"{path}: not a readable {kind.upper()} file: {exc}") from None
    data = getattr(g, "data", None)
    labels = list(getattr(g, "array_labels", None) or [])
    if data is None or np.asarray(data).ndim != 2 or not labels:
        raise ScanError(f"{path}: no data columns found")
    data = np.asarray(data, dtype=np.float64)
    if data.shape[0] != len(labels):
        data = data.T
    attrs = getattr(g, "attrs", None)
    attrs = attrs if isinstance(attrs, dict) else {}  # XDI's header; read_ascii has a Group
    comments: Any = getattr(g, "comments", None) or ""
    comments = comments if isinstance(comments, str) else " ".join(map(str, comments))
    sample = (attrs.get("sample") or {}).get("name", "")
    return Table(
        {label: data[i] for i, label in enumerate(labels)},
        beamline=(attrs.get("beamline") or {}).get("name"),
        title=(comments.strip() or str(sample))[:200],
    )


def _spec(path: Path) -> Table:
    from silx.io.specfile import SfErrFileOpen, SpecFile

    try:
        sf = SpecFile(str(path))
        scans = sf.list()
        if not scans:
            raise ScanError(f"{path}: a SPEC file with no scans")
        scan = sf[0]
        labels, data = list(scan.labels), np.asarray(scan.data, dtype=np.float64)
        title = str(scan.scan_header_dict.get("S", "")).strip()
    except (OSError, ValueError, IndexError, KeyError, SfErrFileOpen) as exc:
        raise ScanError(f"{path}: not a readable SPEC file: {exc}") from None
    if data.ndim != 2 or data.shape[0] != len(labels) or not labels:
        raise ScanError(f"{path}: SPEC scan {scans[0]} has no data columns")
    warnings = []
    if len(scans) > 1:
        warnings.append(f"{len(scans)} scans in the SPEC file: scan {scans[0]} read")
    return Table({label: data[i] for i, label in enumerate(labels)}, None, title, warnings)


def load(path: Path, kind: str) -> Table:
    """The file's columns; an energy column in keV gains an ``<label>_eV`` twin."""
    table = _spec(path) if kind == "spec" else _larch(path, kind)
    for label, values in list(table.columns.items()):
        if _ROLE_LABELS["energy"].search(label) and values.size and np.nanmax(values) < KEV_BELOW:
            table.columns[f"{label}_eV"] = values * 1000.0
    return table


def columns(path: Path, kind: str) -> dict[str, np.ndarray]:
    """Every column of the file by label (keV energies also in eV)."""
    return load(path, kind).columns


def read_column_scan(path: Path, kind: str, said: Overrides = NO_OVERRIDES) -> ScanInfo:
    table = load(path, kind)
    cols = table.columns
    n = len(next(iter(cols.values())))
    datasets = {PREFIX + k: DatasetInfo(PREFIX + k, (n,), "float64") for k in cols}
    warnings = list(table.warnings)
    roles: dict[str, str] = {}
    for role, pattern in _ROLE_LABELS.items():
        found = [label for label in cols if pattern.search(label)]
        if role == "energy" and any(f"{label}_eV" in cols for label in found):
            label = next(label for label in found if f"{label}_eV" in cols)
            warnings.append(f"energy column {label!r} is in keV: read as {label}_eV")
            found = [f"{label}_eV"]
        if found:
            roles[role] = PREFIX + found[0]
    if "energy" not in roles:
        first = next(iter(cols))
        roles["energy"] = PREFIX + first
        warnings.append(f"no energy column named as such: the first, {first!r}")
    beamline = choose_beamline(table.beamline, path.stem, said, warnings)
    visit = choose_visit(None, said, warnings)
    energy = cols[roles["energy"].removeprefix(PREFIX)]
    return ScanInfo(
        path=path,
        scan_id=path.stem,
        beamline=beamline,
        visit=visit,
        title=table.title,
        scan_command="",
        start_time=None,
        end_time=None,
        shape=(n,),
        axes=("energy",),
        axis_values={"energy": tuple(float(v) for v in energy)},
        axis_units={"energy": "eV"},
        finished=True,
        datasets=datasets,
        format=kind,
        layout="xafs",
        roles=roles,
        warnings=tuple(warnings),
    )
