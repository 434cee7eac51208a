"""The web app as the web tests start it: a tmp HPCPROC_HOME, the simulated scan copied under
the one data root, event streams polling fast."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import FastAPI

from hpcproc.web import api as web_api
from hpcproc.web.app import Settings, create_app


def web_app(tmp_path: Path, monkeypatch, sim_scan) -> tuple[FastAPI, Path]:
    """(the app, the scan file under its data root ``tmp_path / "data"``)."""
    home, data = tmp_path / "home", tmp_path / "data"
    (data / "scans").mkdir(parents=True)
    scan = Path(shutil.copy(sim_scan.path, data / "scans" / sim_scan.path.name))
    monkeypatch.setenv("HPCPROC_HOME", str(home))
    monkeypatch.delenv("HPCPROC_LIMS_URL", raising=False)
    monkeypatch.setattr(web_api, "POLL", 0.1)
    return create_app(Settings(home=home, data_roots=[data])), scan
