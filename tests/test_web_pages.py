"""The HTML pages: a real browser (Debian's chromium, driven by Playwright) logs in, submits
the xrf-map recipe on the simulated scan from the generated form and watches the job page
turn to success and show its plot; then page rules (404, 403) and the plots, without it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import h5py
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from web_helpers import OnlyUnder, web_app

from hpcproc.jobs import prepare, record_plan
from hpcproc.recipes import find_recipe
from hpcproc.web import plots
from hpcproc.web.app import COOKIE
from hpcproc.web.jobs import runner

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Site:
    url: str
    services: object
    scan: Path
    tokens: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _add_users(svc) -> dict[str, str]:
    return {
        "alice": svc.users.add("alice", ["cm12345-1"]),
        "bob": svc.users.add("bob", ["cm11111-1"]),
    }


def _release(svc) -> None:
    """Wait for the jobs started, and take the session's cluster back before the app closes
    what it holds."""
    run = svc.extra.get("runner")
    if run is not None:
        assert run.wait(60)
    svc.extra.pop("client", None)


@pytest.fixture
def site(request, tmp_path, monkeypatch, client, sim_scan):
    """The app served by uvicorn in a thread, on a free port, jobs on the session's cluster.
    Parametrized with a root path, it is published only under it, as by a reverse proxy."""
    root = getattr(request, "param", "")
    app, scan = web_app(tmp_path, monkeypatch, sim_scan, root)
    served = OnlyUnder(app, root) if root else app
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(served, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    svc = app.state.services  # the lifespan has run
    svc.extra["client"] = client
    try:
        yield Site(f"http://127.0.0.1:{port}{root}", svc, scan, _add_users(svc))
    finally:
        _release(svc)
        server.should_exit = True
        thread.join(20)


@pytest.fixture
def pages(tmp_path, monkeypatch, sim_scan):
    """The app through TestClient (no job is run)."""
    app, scan = web_app(tmp_path, monkeypatch, sim_scan)
    with TestClient(app) as http:
        svc = app.state.services
        yield http, svc, scan, _add_users(svc)


# ---------------------------------------------------------------- the browser


@contextmanager
def _chromium() -> Iterator[Callable[..., Any]]:
    """Debian's Chromium driven by Playwright; yields ``new_page(**context options)``, a page
    in a fresh browser context (its own cookies). Script errors on any page fail the test."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)

        def new_page(**options: Any) -> Any:
            context = browser.new_context(**options)
            # every page of the context, this one and those opened from it
            context.on("page", lambda page: page.on("pageerror", lambda e: errors.append(str(e))))
            return context.new_page()

        try:
            yield new_page
        finally:
            browser.close()
    assert errors == [], errors


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.parametrize("site", ["", "/hpcproc"], indirect=True, ids=["at-root", "under-proxy"])
def test_submit_in_browser_then_watch_the_job(site):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with _chromium() as new_page:
        page = new_page(viewport={"width": 1280, "height": 1000})

        # Log in with the token: the cookie is set, and / leads to the user's only visit.
        page.goto(f"{site.url}/")
        root = urlsplit(site.url).path  # "" or the proxy's path
        expect(page).to_have_url(f"{site.url}/login?next={quote(root + '/', safe='')}")
        page.fill("#token", "not-a-token")
        page.click("button[type=submit]")
        expect(page.locator(".error")).to_contain_text("not valid")
        page.fill("#token", site.tokens["alice"])
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{site.url}/visits/cm12345-1")
        (cookie,) = [c for c in page.context.cookies() if c["name"] == COOKIE]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        visit_tab = page  # stays open: the job must show up there without a reload
        page = page.context.new_page()

        # The form from the recipe's JSON Schema, defaults filled in.
        page.goto(f"{site.url}/recipes/xrf-map/submit?scan={site.scan}")
        width = page.locator("input[name=window_width]")
        assert width.get_attribute("type") == "number"
        assert (width.get_attribute("min"), width.get_attribute("max")) == ("1", "1000")
        assert width.input_value() == "40"
        elements = page.locator("input[name=elements]")
        assert elements.input_value().startswith("Fe-Ka, Co-Ka")

        # Out of range: the browser refuses it (min/max); past that check (noValidate),
        # the API's 422 reason is shown next to the form, and the page stays.
        width.fill("0")
        page.click("#submit")
        assert page.evaluate(
            "document.querySelector('input[name=window_width]').validity.rangeUnderflow"
        )
        page.evaluate("document.getElementById('submit-form').noValidate = true")
        page.click("#submit")
        expect(page.locator("#form-error")).to_contain_text("below its minimum 1")
        assert "/submit" in page.url

        elements.fill("Fe-Ka, Cu-Ka, Zn-Ka")
        width.fill("30")
        page.click("#submit")
        page.wait_for_url(f"{site.url}/jobs/*", timeout=20_000)
        job_id = int(page.url.rsplit("/", 1)[1])

        # Live status until success; then the plot appears.
        expect(page.locator("#job-status")).to_have_attribute(
            "data-status", "success", timeout=60_000
        )
        img = page.locator('#plots figure[data-step="windows"] img')
        expect(img).to_be_visible(timeout=20_000)
        page.wait_for_function(
            "() => { const i = document.querySelector('#plots img');"
            " return i && i.complete && i.naturalWidth > 0; }",
            timeout=20_000,
        )
        expect(page.locator("#attachments a")).not_to_have_count(0)
        expect(page.locator("#steps [data-status]").first).to_have_text("success")
        expect(page.locator('#steps tr[data-step="windows"] .start')).not_to_be_empty()
        assert page.locator("#dashboard").get_attribute("href").startswith("http")
        params = page.locator("table.params").inner_text()
        assert "Zn-Ka" in params and "30" in params
        page.screenshot(path=str(ARTIFACTS / "job-page.png"), full_page=True)

        # The visit page opened before the job was submitted lists it by now (polling),
        # with its final status.
        row = visit_tab.locator(f'#jobs tr[data-job="{job_id}"]')
        expect(row.locator("[data-status]")).to_have_text("success", timeout=30_000)
        expect(row).to_contain_text("xrf-map")
        assert "/jobs/" not in visit_tab.url

        # The reprocess form starts from the job's parameters.
        page.goto(f"{site.url}/jobs/{job_id}/reprocess")
        assert page.locator("input[name=window_width]").input_value() == "30"
        page.fill("input[name=window_width]", "20")
        page.click("#submit")
        page.wait_for_url(lambda url: "/jobs/" in url and "reprocess" not in url)
        assert int(page.url.rsplit("/", 1)[1]) != job_id
        expect(page.locator("dl.card")).to_contain_text(f"job {job_id}")  # reprocess of
        expect(page.locator("table.params")).to_contain_text("20")


def _log_in(page, url: str, token: str, then: str) -> None:
    page.goto(f"{url}/login?next={urlsplit(url).path}{then}")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}{then}")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_staff_approve_a_held_job_on_its_page(site):
    """A job the launcher held for approval: its user sees the badge and no button; staff
    press Approve and watch it run to success on the same page."""
    from playwright.sync_api import expect

    plan = prepare(find_recipe("xrf-map"), site.scan, {})
    job_id = record_plan(
        plan, lims=site.services.lims, automatic=True, awaiting_approval=True
    ).job_id
    staff = site.services.users.add("admin", [], staff=True)
    with _chromium() as new_page:
        user = new_page()
        _log_in(user, site.url, site.tokens["alice"], f"/jobs/{job_id}")
        expect(user.locator("#approval-badge")).to_have_text("awaiting approval")
        expect(user.locator("#approval")).to_contain_text("needs approval")
        assert user.locator("#approve").count() == 0

        page = new_page()
        _log_in(page, site.url, staff, f"/jobs/{job_id}")
        expect(page.locator("#job-status")).to_have_attribute("data-status", "queued")
        page.click("#approve")
        expect(page.locator("#approval-badge")).to_have_count(0)
        expect(page.locator("#job-status")).to_have_attribute(
            "data-status", "success", timeout=60_000
        )
        page.reload()
        expect(page.locator("#approval-record")).to_contain_text("approved by admin at ")
        # The user's page, left open, follows the job to its end too.
        expect(user.locator("#job-status")).to_have_attribute(
            "data-status", "success", timeout=30_000
        )


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_cancel_a_job_on_its_page(site):
    """The visit's user cancels a job not yet run, with a reason (confirming the dialog); the
    page shows the cancel, and when the service's runner comes to it nothing runs."""
    from playwright.sync_api import expect

    plan = prepare(find_recipe("xrf-map"), site.scan, {})
    job = record_plan(plan, lims=site.services.lims)
    with _chromium() as new_page:
        page = new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
        _log_in(page, site.url, site.tokens["alice"], f"/jobs/{job.job_id}")
        page.fill("#cancel-reason", "beam lost")
        page.click("#cancel")
        expect(page.locator("#cancel-record")).to_contain_text("cancelled by alice at ")
        expect(page.locator("#cancel-record")).to_contain_text(": beam lost")
        assert dialogs and f"Cancel job {job.job_id}?" in dialogs[0]
        runner(site.services).start(plan, job)
        expect(page.locator("#job-status")).to_have_attribute(
            "data-status", "skipped", timeout=60_000
        )
        expect(page.locator('#steps tr[data-step="windows"] .message')).to_contain_text(
            "skipped: cancelled by alice"
        )
        page.reload()  # an ended job has no Cancel button; the record stays
        expect(page.locator("#cancel")).to_have_count(0)
        expect(page.locator("#cancel-record")).to_contain_text(": beam lost")


# ---------------------------------------------------------------- without a browser


def test_pages_without_a_browser(pages, tmp_path):
    http, svc, scan, tokens = pages
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    bob = {"Authorization": f"Bearer {tokens['bob']}"}
    job = record_plan(prepare(find_recipe("xrf-map"), scan, {}), lims=svc.lims)

    # No token: pages send to the login form; a plot answers 401.
    r = http.get(f"/jobs/{job.job_id}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert http.get(f"/jobs/{job.job_id}/plots/windows.png").status_code == 401

    r = http.get(f"/jobs/{job.job_id}", headers=alice)
    assert r.status_code == 200 and "xrf-map" in r.text and "/static/job.js" in r.text
    assert http.get("/visits/cm12345-1", headers=alice).status_code == 200
    assert "xrf-map" in http.get("/visits/cm12345-1", headers=alice).text

    # Another visit's job, visit or plot: 404 (not disclosed).
    assert http.get(f"/jobs/{job.job_id}", headers=bob).status_code == 404
    assert http.get(f"/jobs/{job.job_id}/reprocess", headers=bob).status_code == 404
    assert http.get(f"/jobs/{job.job_id}/plots/windows.png", headers=bob).status_code == 404
    assert http.get("/visits/cm12345-1", headers=bob).status_code == 404
    assert http.get("/jobs/999999", headers=alice).status_code == 404

    # A Result outside the data roots: 403, even though the file exists and is valid.
    outside = tmp_path / "outside" / "result.nxs"
    outside.parent.mkdir()
    _xrf_file(outside)
    svc.lims.add_attachment(job.programs["windows"], outside, "Result", 1)
    r = http.get(f"/jobs/{job.job_id}/plots/windows.png", headers=alice)
    assert r.status_code == 403 and "outside the data roots" in r.json()["detail"]

    # Login: a bad token is refused, a good one sets an HttpOnly SameSite=Strict cookie.
    r = http.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert r.status_code == 401
    r = http.post(
        "/login", data={"token": tokens["alice"], "next": "//evil.example"}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    r = http.get("/", follow_redirects=False)  # the cookie is now sent
    assert r.status_code == 303 and r.headers["location"] == "/visits/cm12345-1"

    # The submit form comes from the schema; an unknown recipe is 404.
    r = http.get(f"/recipes/xrf-map/submit?scan={scan}")
    assert r.status_code == 200
    assert 'name="window_width"' in r.text and 'min="1"' in r.text and 'max="1000"' in r.text
    assert http.get("/recipes/no-such-recipe/submit").status_code == 404
    assert http.get("/static/app.css").status_code == 200
    assert http.get("/static/..%2Fpages.py").status_code == 404


# ---------------------------------------------------------------- the plots


def _nxdata(group: h5py.Group, name: str, signal: str, axes: list[str]) -> h5py.Group:
    data = group.create_group(name)
    data.attrs.update(NX_class="NXdata", signal=signal, axes=axes)
    return data


def _xrf_file(path: Path) -> None:
    with h5py.File(path, "w") as f:
        proc = f.create_group("entry/windows")
        proc.attrs.update(NX_class="NXprocess", default="maps")
        maps = _nxdata(proc, "maps", "Fe-Ka", ["y", "x"])
        maps.attrs["auxiliary_signals"] = ["Cu-Ka"]
        maps["Fe-Ka"] = np.random.default_rng(0).random((6, 8))
        maps["Cu-Ka"] = np.full((6, 8), np.nan)


def test_plots_of_each_kind(tmp_path):
    path = tmp_path / "p.nxs"
    _xrf_file(path)
    with h5py.File(path, "a") as f:
        proc = f.create_group("entry/integrate")
        proc.attrs["default"] = "integrated"
        data = _nxdata(proc, "integrated", "I", ["y", "x", "q"])
        intensity = np.full((3, 4, 50), np.nan)
        intensity[:2] = np.random.default_rng(1).random((2, 4, 50))
        data["I"], data["q"] = intensity, np.linspace(1, 5, 50)
        data["q"].attrs["units"] = "1/nm"
        vol = _nxdata(f.create_group("entry/reconstruct"), "reconstruction", "I", ["q", ".", "."])
        vol["I"], vol["q"] = np.random.default_rng(2).random((5, 16, 16)), np.arange(5.0)
        labels = _nxdata(f.create_group("entry/phases"), "phases", "phase", [".", "."])
        labels["phase"] = np.arange(64, dtype=np.int32).reshape(8, 8) % 3
        empty = _nxdata(f.create_group("entry/empty"), "integrated", "I", ["y", "x", "q"])
        empty["I"] = np.full((2, 2, 4), np.nan)
    for step, uses in [
        ("windows", "xrf_windows"),
        ("integrate", "xrd_integrate"),
        ("reconstruct", "tomo_reconstruct"),
        ("phases", "cluster_patterns"),
    ]:
        assert plots.step_png(path, step, uses).startswith(PNG), step
    for step in ("empty", "missing"):
        with pytest.raises(plots.NoPlot):
            plots.step_png(path, step, "xrd_integrate")
