"""XAFS column files: XDI (xraylarch's ``read_xdi``) and plain column text (``read_ascii``).

Each column is a dataset ``/columns/<label>`` of the scan; the ``xafs`` layout maps the usual
labels to the roles ``energy``, ``i0``, ``it``, ``if`` and ``mu``. A file is an energy scan:
one point per row.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from hpcproc.errors import ScanError
from hpcproc.formats.metadata import NO_OVERRIDES, Overrides, choose_beamline, choose_visit
from hpcproc.scaninfo import DatasetInfo, ScanInfo

PREFIX = "/columns/"
_ROLE_LABELS: dict[str, re.Pattern[str]] = {
    "energy": re.compile(r"^(energy|e|ev|energy_ev|enc|energy_readback)$", re.I),
    "i0": re.compile(r"^(i0|io|i_0|mon|monitor)$", re.I),
    "it": re.compile(r"^(itrans|it|i1|i_t)$", re.I),
    "if": re.compile(r"^(ifluor|if|iff|ifluo|fluo|ff)$", re.I),
    "mu": re.compile(r"^(mu|mutrans|xmu|mu_trans)$", re.I),
}


def load(path: Path, kind: str):  # -> larch Group with .array_labels and .data (columns x rows)
    from larch.io import read_ascii, read_xdi

    try:
        g = read_xdi(str(path)) if kind == "xdi" else read_ascii(str(path))
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise ScanError(f"{path}: not a readable {kind.upper()} file: {exc}") from None
    data = getattr(g, "data", None)
    labels = list(getattr(g, "array_labels", None) or [])
    if data is None or np.asarray(data).ndim != 2 or not labels:
        raise ScanError(f"{path}: no data columns found")
    return g


def columns(path: Path, kind: str) -> dict[str, np.ndarray]:
    """Every column of the file by label."""
    g = load(path, kind)
    data = np.asarray(g.data, dtype=np.float64)
    if data.shape[0] != len(g.array_labels):
        data = data.T
    return {label: data[i] for i, label in enumerate(g.array_labels)}


def read_column_scan(path: Path, kind: str, said: Overrides = NO_OVERRIDES) -> ScanInfo:
    g = load(path, kind)
    cols = columns(path, kind)
    n = len(next(iter(cols.values())))
    datasets = {PREFIX + k: DatasetInfo(PREFIX + k, (n,), "float64") for k in cols}
    roles: dict[str, str] = {}
    for role, pattern in _ROLE_LABELS.items():
        for label in cols:
            if pattern.match(label):
                roles[role] = PREFIX + label
                break
    warnings: list[str] = []
    if "energy" not in roles:
        roles["energy"] = PREFIX + next(iter(cols))
        warnings.append(f"no energy column named as such: the first, {next(iter(cols))!r}")
    attrs = getattr(g, "attrs", None)
    attrs = attrs if isinstance(attrs, dict) else {}  # XDI's header; read_ascii has a Group
    beamline = choose_beamline((attrs.get("beamline") or {}).get("name"), path.stem, said, warnings)
    visit = choose_visit(None, said, warnings)
    energy = cols[roles["energy"].removeprefix(PREFIX)]
    sample = (attrs.get("sample") or {}).get("name", "")
    comments = getattr(g, "comments", None) or ""
    comments = comments if isinstance(comments, str) else " ".join(map(str, comments))
    return ScanInfo(
        path=path,
        scan_id=path.stem,
        beamline=beamline,
        visit=visit,
        title=(comments.strip() or str(sample))[:200],
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
