"""Who and where a scan belongs to (beamline, visit): from the file, the person, or a default.

Metadata never blocks a job: a missing or placeholder visit (GDA writes ``DEFAULT`` when none
was set) or beamline is taken from what the person said (``--visit``, ``--beamline``), else
from the facility's defaults ($HPCPROC_DEFAULT_VISIT, $HPCPROC_DEFAULT_BEAMLINE), else the
scan goes to the local visit and the beamline ``unknown``; each such choice is a warning.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

VISIT_RE = re.compile(r"^([A-Za-z]+)(\d+)(?:-(\d+))?$")  # cm12345-1: code, number, session
BEAMLINE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
UNKNOWN_BEAMLINE = "unknown"
_SCAN_STEM = re.compile(r"^([a-z][a-z0-9]*(?:-[0-9])?)-(\d+)$")  # i18-000123, i15-1-12345


@dataclass(frozen=True)
class Overrides:
    """What the person said about the scan, over what its file says."""

    visit: str | None = None
    beamline: str | None = None


def beamline_from_stem(stem: str) -> str | None:
    """``i18-000123`` -> ``i18`` (Diamond's file names are <beamline>-<scan number>)."""
    m = _SCAN_STEM.match(stem)
    return m.group(1) if m else None


def choose_visit(found: str | None, said: Overrides, warnings: list[str]) -> str | None:
    """The visit to record: said, else the file's if it is one, else the default (None is
    the LIMS's local visit)."""
    if said.visit:
        if not VISIT_RE.match(said.visit):
            from hpcproc.errors import InputError

            raise InputError(f"--visit {said.visit!r} is not like 'cm12345-1'")
        return said.visit
    if found and VISIT_RE.match(found):
        return found
    default = os.environ.get("HPCPROC_DEFAULT_VISIT") or None
    where = default or "the local visit"
    what = f"placeholder visit {found!r}" if found else "no visit"
    warnings.append(f"{what} in the file: recorded under {where} (give --visit)")
    return default


def choose_beamline(found: str | None, stem: str, said: Overrides, warnings: list[str]) -> str:
    if said.beamline:
        return said.beamline
    name = re.sub(r"[^a-z0-9_.]+", "-", (found or "").strip().lower()).strip("-")
    if name and BEAMLINE_RE.match(name) and name != "default":
        return name  # "APS 13ID" (an XDI header) -> "aps-13id"
    from_name = beamline_from_stem(stem)
    if from_name:
        return from_name
    default = os.environ.get("HPCPROC_DEFAULT_BEAMLINE") or UNKNOWN_BEAMLINE
    warnings.append(f"no beamline in the file: recorded as {default!r} (give --beamline)")
    return default


NO_OVERRIDES = Overrides()
