"""The web app as the web tests start it: a tmp HPCPROC_HOME, the simulated scan copied under
the one data root, event streams polling fast."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import FastAPI

from hpcproc.web import api as web_api
from hpcproc.web.app import Settings, create_app


def web_app(tmp_path: Path, monkeypatch, sim_scan, root_path: str = "") -> tuple[FastAPI, Path]:
    """(the app, the scan file under its data root ``tmp_path / "data"``); ``root_path``: the
    URL path a reverse proxy would publish it under."""
    home, data = tmp_path / "home", tmp_path / "data"
    (data / "scans").mkdir(parents=True)
    scan = Path(shutil.copy(sim_scan.path, data / "scans" / sim_scan.path.name))
    monkeypatch.setenv("HPCPROC_HOME", str(home))
    monkeypatch.delenv("HPCPROC_LIMS_URL", raising=False)
    monkeypatch.setattr(web_api, "POLL", 0.1)
    settings = Settings(home=home, data_roots=[data], root_path=root_path)
    return create_app(settings), scan


class OnlyUnder:
    """A reverse proxy that publishes the app under ``prefix`` and nothing else (it passes the
    prefix on): a link the pages give out without it is a 404 here, as behind the real one."""

    def __init__(self, app, prefix: str) -> None:
        self.app, self.prefix = app, prefix

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and not path.startswith(f"{self.prefix}/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": f"not under {self.prefix}".encode()})
            return
        await self.app(scope, receive, send)
