"""What ``hpcproc inspect FILE`` tells about a scan file: its format and layout, the scan's
shape and axes, every dataset with its storage and links, the links to files not there, and
for each recipe whether it applies and if not why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcproc.errors import InputError
from hpcproc.formats import read_scan_info
from hpcproc.recipes import Recipe, list_recipes
from hpcproc.scaninfo import ScanInfo


def inspect_scan(
    path: Path,
    layout: str | None = None,
    recipes: list[Recipe] | None = None,
) -> dict[str, Any]:
    """A plain-data report (the JSON of ``hpcproc inspect --json``)."""
    scan = read_scan_info(path, layout)
    return report(scan, list_recipes() if recipes is None else recipes)


def report(scan: ScanInfo, recipes: list[Recipe]) -> dict[str, Any]:
    return {
        "file": str(scan.path),
        "format": scan.format,
        "layout": scan.layout,
        "scan_id": scan.scan_id,
        "beamline": scan.beamline,
        "visit": scan.visit,
        "title": scan.title,
        "finished": scan.finished,
        "shape": list(scan.shape),
        "axes": list(scan.axes),
        "axis_ranges": {
            a: [min(v), max(v), scan.axis_units.get(a, "")] if v else []
            for a, v in scan.axis_values.items()
        },
        "roles": dict(scan.roles),
        "datasets": {
            p: {
                "shape": list(d.shape),
                "dtype": d.dtype,
                "compression": d.compression,
                "chunks": list(d.chunks) if d.chunks else None,
                "link": d.link,
            }
            for p, d in sorted(scan.datasets.items())
        },
        "missing_links": dict(sorted(scan.missing_links.items())),
        "warnings": list(scan.warnings),
        "recipes": {r.name: _fit(r, scan) for r in recipes},
    }


def _fit(recipe: Recipe, scan: ScanInfo) -> dict[str, Any]:
    """Whether the recipe applies by default, and whether it can run when asked by name."""
    applies, why = recipe.applies(scan)
    try:
        from hpcproc.dispatch.plan import make_plan

        make_plan(recipe, scan, {})
        runs: bool | str = True
    except InputError as exc:
        runs = str(exc)
    rule = recipe.applies_to
    has_rule = bool(rule.beamlines or rule.nexus.requires or rule.nexus.classes)
    return {"applies": applies, "has_rule": has_rule, "why_not": why, "runs_by_name": runs}
