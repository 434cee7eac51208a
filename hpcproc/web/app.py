"""The FastAPI application: settings, the shared pieces every route uses, JSON errors.

``create_app(settings)`` builds the app; ``hpcproc serve`` runs it with uvicorn. Routes get the
request's user with :func:`current_user` (401 without a valid token) and the LIMS with
:func:`lims`; a job or visit the user may not see is answered 404 (its existence is not
disclosed), an action they may not take 403. Every error is JSON ``{"detail": reason}``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from hpcproc import __version__, config
from hpcproc.errors import ConflictError, HpcprocError, InputError
from hpcproc.lims import Lims, default_lims_url
from hpcproc.web.auth import User, Users

COOKIE = "hpcproc_token"


@dataclass
class Settings:
    """What the service needs; defaults follow the CLI's (``$HPCPROC_HOME``, its LIMS)."""

    lims_url: str = ""
    home: Path = field(default_factory=config.home)
    data_roots: list[Path] = field(default_factory=list)  # attachments are served from these
    cluster: str = "local"  # profile the submitted jobs run on
    max_jobs: int = 2
    # The URL path the service is published under by a reverse proxy ("/hpcproc"), or "".
    root_path: str = field(default_factory=lambda: os.environ.get("HPCPROC_ROOT_PATH", ""))

    def __post_init__(self) -> None:
        self.root_path = normal_root_path(self.root_path)
        self.home = Path(self.home)
        self.lims_url = self.lims_url or default_lims_url(self.home)
        roots = self.data_roots or [
            Path(p) for p in os.environ.get("HPCPROC_DATA_ROOTS", "").split(os.pathsep) if p
        ]
        self.data_roots = [Path(r).resolve() for r in (roots or [self.home])]

    @property
    def users_path(self) -> Path:
        return self.home / "web-users.sqlite"


def normal_root_path(text: str) -> str:
    """``/hpcproc`` from ``hpcproc``, ``/hpcproc/`` or ``/hpcproc``; "" for none."""
    text = text.strip().strip("/")
    if not text:
        return ""
    if any(part in ("", ".", "..") for part in text.split("/")) or any(c in text for c in "?#%\\ "):
        raise InputError(f"root path {text!r} is not a plain URL path like /hpcproc")
    return "/" + text


class UnderRootPath:
    """ASGI middleware for a service published under a path prefix by a reverse proxy: the
    prefix is the request's root path whether the proxy passes it on or takes it off, so routes
    match and pages build their links under it."""

    def __init__(self, app: Any, prefix: str) -> None:
        self.app, self.prefix = app, prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path, p = scope["path"], self.prefix
            if path != p and not path.startswith(p + "/"):  # the proxy took it off
                raw = scope.get("raw_path") or path.encode()
                scope = {**scope, "path": p + path, "raw_path": p.encode() + raw}
            scope = {**scope, "root_path": p}
        await self.app(scope, receive, send)


class Services:
    """What the app holds while it runs (one per app)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.users = Users(settings.users_path)
        self.lims = Lims(settings.lims_url)
        self.extra: dict[str, Any] = {}  # api/pages keep their own things here (job runner)

    def close(self) -> None:
        for key, thing in self.extra.items():
            if key == "client":
                continue  # a Dask client handed in from outside: its owner closes it
            close = getattr(thing, "close", None)
            if callable(close):
                close()
        self.lims.close()
        self.users.close()


def services(request: Request) -> Services:
    return request.app.state.services


def root(request: Request) -> str:
    """The path prefix of every URL the service gives out ("" when served at /)."""
    return services(request).settings.root_path


def lims(request: Request) -> Lims:
    return services(request).lims


def token_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE) or request.query_params.get("token")


def current_user(request: Request) -> User:
    user = services(request).users.user(token_of(request))
    if user is None:
        raise HTTPException(401, "a valid token is needed (Authorization: Bearer <token>)")
    return user


CurrentUser = Depends(current_user)


def confined(path: Path | str, roots: list[Path]) -> Path:
    """``path`` with symbolic links resolved, if it lies under one of ``roots``; else 403.
    (A link inside a root that points outside it is refused too.)"""
    real = Path(path).resolve()
    if not any(real == root or root in real.parents for root in roots):
        raise HTTPException(403, f"{path} is outside the data roots this service serves")
    return real


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Iterator[None]:  # type: ignore[misc]
        app.state.services = Services(settings)
        try:
            yield
        finally:
            app.state.services.close()

    app = FastAPI(title="hpcproc", version=__version__, lifespan=lifespan)
    if settings.root_path:
        app.add_middleware(UnderRootPath, prefix=settings.root_path)

    @app.exception_handler(HpcprocError)
    async def _hpcproc_error(_request: Request, exc: HpcprocError) -> JSONResponse:
        code = 500
        if isinstance(exc, InputError):
            code = 422
        elif isinstance(exc, ConflictError):
            code = 409
        return JSONResponse({"detail": str(exc)}, status_code=code)

    from hpcproc.web import api, pages  # routes (imported here: they import this module)

    app.include_router(api.router)
    app.include_router(pages.router)
    return app
