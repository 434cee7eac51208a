"""Where the recipes, cluster profiles, environments and notebooks hpcproc ships are found."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """``recipes``, ``clusters``, ``envs`` or ``notebooks``: the copy inside an installed wheel
    (``hpcproc/_shipped/<name>``, made by setup.py), else the source checkout's own."""
    inside = _PACKAGE / "_shipped" / name
    return inside if inside.is_dir() else _PACKAGE.parent / name
