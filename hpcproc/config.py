"""Where hpcproc keeps its data (the embedded LIMS, demo scans): $HPCPROC_HOME or the XDG dir."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("HPCPROC_HOME")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "hpcproc"
