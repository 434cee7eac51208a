"""The HTML pages: log in, a visit's jobs, a job (steps, attachments, plots), a submit form.

Pages are Jinja2 templates with a little vanilla JavaScript (``static/``, no external asset):
the browser calls the JSON API (``/api/...``) with the ``hpcproc_token`` cookie, follows job
statuses with the API's server-sent events and reloads the plots when a job ends. Plots are
PNGs rendered here (:mod:`hpcproc.web.plots`) from the processed file a step attached as its
Result, which must lie under the service's data roots (403 otherwise).

A page without a valid token redirects to ``/login``; a visit or job the user may not see
is 404, as in the API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from hpcproc.errors import HpcprocError, LimsError
from hpcproc.lims.queries import visit_jobs
from hpcproc.lims.records import JobRecord
from hpcproc.web import plots
from hpcproc.web.api import attachment_url, visible_job
from hpcproc.web.app import COOKIE, confined, root, services, token_of
from hpcproc.web.auth import User

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["attachment_url"] = attachment_url

router = APIRouter(include_in_schema=False)

RESULT = "Result"


# ---------------------------------------------------------------- helpers


class _Login(Exception):
    """No valid token: the page redirects to the login form."""


def _user(request: Request) -> User:
    user = services(request).users.user(token_of(request))
    if user is None:
        raise _Login
    return user


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = f"{root(request)}/login?next={quote(target, safe='')}"
    return RedirectResponse(login, status_code=303)


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page; every link in it starts with ``root``, the path the service is published under."""
    context = {"root": root(request), **context}
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _visible_job(request: Request, user: User, job_id: int) -> tuple[JobRecord, str | None]:
    """The job and its visit; 404 if the user may not see it (as the API answers)."""
    return visible_job(services(request).lims, user, job_id)


def _result_file(job: JobRecord, step_id: str | None = None) -> Path | None:
    """The processed file a step (or any step) attached as its Result."""
    for step in job.steps:
        if step_id is not None and step.step_id != step_id:
            continue
        for att in step.attachments:
            if att.file_type == RESULT and att.path.suffix in (".nxs", ".h5", ".hdf5", ".nx5"):
                return att.path
    return None


def _provenance(request: Request, job: JobRecord) -> dict[str, Any]:
    """The recipe version and sha256 the processed file records (empty if unreadable)."""
    path = _result_file(job)
    if path is None:
        return {}
    try:
        path = confined(path, services(request).settings.data_roots)
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            for step in job.steps:
                note = f.get(f"entry/{step.step_id}/provenance/data")
                if note is not None:
                    text = note[()]
                    return json.loads(text.decode() if isinstance(text, bytes) else text)
    except (HTTPException, OSError, ValueError, KeyError):
        return {}
    return {}


# ---------------------------------------------------------------- static files


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    path = (STATIC / name).resolve()
    if path.parent != STATIC or not path.is_file():
        raise HTTPException(404, f"no static file {name}")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)


# ---------------------------------------------------------------- login, index


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "") -> HTMLResponse:
    return _render(request, "login.html", next=_safe_next(request, next), error="")


def _safe_next(request: Request, target: str) -> str:
    """Where to go after logging in: a path of this service, else its front page."""
    prefix = root(request)
    ours = target.startswith(f"{prefix}/") or (prefix != "" and target == prefix)
    return target if ours and not target.startswith("//") else f"{prefix}/"


@router.post("/login", response_model=None)
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode(errors="replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next(request, (form.get("next") or [""])[0])
    if services(request).users.user(token) is None:
        return _render(
            request, "login.html", status_code=401, next=target, error="This token is not valid."
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=30 * 24 * 3600,
    )
    return response


@router.post("/logout")
def logout(request: Request) -> RedirectResponse:
    response = RedirectResponse(f"{root(request)}/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/", response_model=None)
def index(request: Request) -> Response:
    try:
        user = _user(request)
    except _Login:
        return _login_redirect(request)
    visits = sorted(user.visits)
    if len(visits) == 1 and not user.staff:
        return RedirectResponse(f"{root(request)}/visits/{quote(visits[0])}", status_code=303)
    return _render(request, "index.html", user=user, visits=visits)


# ---------------------------------------------------------------- visit


@router.get("/visits/{visit}", response_model=None)
def visit_page(request: Request, visit: str) -> Response:
    try:
        user = _user(request)
    except _Login:
        return _login_redirect(request)
    if not user.can_see(visit):
        raise HTTPException(404, f"no visit {visit}")
    try:
        jobs = visit_jobs(services(request).lims, visit, limit=500)
    except LimsError as exc:
        raise HTTPException(404, str(exc)) from None
    collections: dict[Any, dict[str, Any]] = {}
    for j in jobs:
        dc = collections.setdefault(
            j.dc_id,
            {
                "dc_id": j.dc_id,
                "scan_file": j.scan_file,
                "title": j.title,
                "experiment_type": j.experiment_type or "",
                "beamline": j.beamline or "",
                "jobs": 0,
            },
        )
        dc["jobs"] += 1
    from hpcproc.recipes.loader import list_recipes

    recipes = sorted(r.name for r in list_recipes(errors=[]))
    return _render(
        request,
        "visit.html",
        user=user,
        visit=visit,
        jobs=jobs,
        collections=list(collections.values()),
        recipes=recipes,
    )


# ---------------------------------------------------------------- job


@router.get("/jobs/{job_id}", response_model=None)
def job_page(request: Request, job_id: int) -> Response:
    try:
        user = _user(request)
    except _Login:
        return _login_redirect(request)
    job, visit = _visible_job(request, user, job_id)
    dashboards = sorted(
        {s.environment["dask_dashboard"] for s in job.steps if s.environment.get("dask_dashboard")}
    )
    from hpcproc.approval import approval_of
    from hpcproc.cancel import cancel_of
    from hpcproc.job_keys import APPROVAL, CANCEL, REPROCESS_OF

    ours = (REPROCESS_OF, APPROVAL, CANCEL)
    parameters = {k: v for k, v in job.parameters.items() if k not in ours}
    parent = job.parameters.get(REPROCESS_OF)
    return _render(
        request,
        "job.html",
        user=user,
        job=job,
        visit=visit,
        parameters=parameters,
        parent=parent,
        approval=approval_of(job),
        cancelled=cancel_of(job),
        provenance=_provenance(request, job),
        dashboards=dashboards,
        result=_result_file(job),
    )


@router.get("/jobs/{job_id}/plots/{step}.png")
def step_plot(request: Request, job_id: int, step: str) -> Response:
    user = services(request).users.user(token_of(request))
    if user is None:
        raise HTTPException(401, "a valid token is needed")
    job, _visit = _visible_job(request, user, job_id)
    match = [s for s in job.steps if s.step_id == step]
    if not match:
        raise HTTPException(404, f"job {job_id} has no step {step!r}")
    path = _result_file(job, step)
    if path is None:
        raise HTTPException(404, f"step {step!r} of job {job_id} has no result file (yet)")
    real = confined(path, services(request).settings.data_roots)
    try:
        png = plots.step_png(real, step, match[0].uses)
    except plots.NoPlot as exc:
        raise HTTPException(404, str(exc)) from None
    except OSError as exc:
        raise HTTPException(404, f"cannot read {path}: {exc}") from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------- submit forms


def _fields(schema: dict[str, Any], values: dict[str, Any]) -> list[dict[str, Any]]:
    """Form fields for the properties of a JSON Schema, filled with ``values`` or defaults."""
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema.get("properties", {}).items():
        types = prop.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        nullable = "null" in types
        kind = next((t for t in types if t != "null"), "string")
        value = values.get(name, prop.get("default"))
        field: dict[str, Any] = {
            "name": name,
            "title": prop.get("title", name),
            "description": prop.get("description", ""),
            "required": name in required,
            "nullable": nullable,
            "min": prop.get("minimum"),
            "max": prop.get("maximum"),
        }
        if "enum" in prop:
            options = [v for v in prop["enum"] if v is not None]
            field.update(
                input="select",
                kind=kind,
                options=[{"value": json.dumps(v), "label": str(v)} for v in options],
                value=json.dumps(value) if value is not None else "",
            )
        elif kind == "boolean":
            field.update(input="checkbox", kind=kind, value=bool(value))
        elif kind in ("integer", "number"):
            field.update(input="number", kind=kind, value="" if value is None else value)
        elif kind == "array":
            item = prop.get("items", {}).get("type", "string")
            text = ", ".join(str(v) for v in value) if isinstance(value, list) else ""
            field.update(input="list", kind=kind, item=item, value=text)
        else:
            field.update(input="text", kind=kind, value="" if value is None else str(value))
        fields.append(field)
    return fields


def _recipe(name: str) -> Any:
    from hpcproc.recipes.loader import find_recipe

    if "/" in name or name.endswith((".yaml", ".yml")):
        raise HTTPException(404, f"no recipe named {name!r}")
    try:
        return find_recipe(name)
    except HpcprocError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/recipes/{name}/submit", response_model=None)
def submit_page(request: Request, name: str, scan: str = "") -> Response:
    try:
        user = _user(request)
    except _Login:
        return _login_redirect(request)
    recipe = _recipe(name)
    schema = recipe.parameters_schema()
    return _render(
        request,
        "submit.html",
        user=user,
        recipe=recipe,
        fields=_fields(schema, {}),
        scan=scan,
        action=f"{root(request)}/api/jobs",
        parent=None,
    )


@router.get("/jobs/{job_id}/reprocess", response_model=None)
def reprocess_page(request: Request, job_id: int) -> Response:
    try:
        user = _user(request)
    except _Login:
        return _login_redirect(request)
    job, _visit = _visible_job(request, user, job_id)
    recipe = _recipe(job.recipe)
    schema = recipe.parameters_schema()
    values = {k: v for k, v in job.parameters.items() if k in schema.get("properties", {})}
    return _render(
        request,
        "submit.html",
        user=user,
        recipe=recipe,
        fields=_fields(schema, values),
        scan=str(job.scan_file or ""),
        action=f"{root(request)}/api/jobs/{job_id}/reprocess",
        parent=job,
    )
