"""The JSON API, for real: FastAPI TestClient, SQLite LIMS under a tmp HPCPROC_HOME, jobs run
on the session's LocalCluster, the simulated I18 scan (visit cm12345-1) under the data root."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
from fastapi.testclient import TestClient
from web_helpers import web_app

from hpcproc.approval import recorded_plan
from hpcproc.errors import InputError
from hpcproc.job_keys import REPROCESS_OF
from hpcproc.jobs import prepare, record_plan
from hpcproc.recipes import find_recipe
from hpcproc.status import Status
from hpcproc.web.app import Settings
from hpcproc.web.jobs import runner


@dataclass
class Api:
    http: TestClient
    services: object
    data: Path
    scan: Path
    tokens: dict[str, str]

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def get(self, url: str, who: str = "alice", **kw):
        return self.http.get(url, headers=self.h(who), **kw)

    def post(self, url: str, body: dict, who: str = "alice"):
        return self.http.post(url, json=body, headers=self.h(who))

    def wait_job(self, job_id: int, timeout: float = 40.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = self.get(f"/api/jobs/{job_id}")
            assert r.status_code == 200, r.text
            job = r.json()
            if job["steps"] and all(
                Status(s["status"]).final for s in job["steps"]
            ):  # every step final
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.2)


@pytest.fixture
def api(tmp_path, monkeypatch, client, sim_scan):
    app, scan = web_app(tmp_path, monkeypatch, sim_scan)
    data = tmp_path / "data"
    with TestClient(app) as http:
        svc = app.state.services
        svc.extra["client"] = client  # the session's LocalCluster: never closed by the app
        tokens = {
            "alice": svc.users.add("alice", ["cm12345-1"]),
            "bob": svc.users.add("bob", ["cm11111-1"]),
            "staff": svc.users.add("admin", [], staff=True),
        }
        yield Api(http, svc, data, scan, tokens)
        run = svc.extra.get("runner")
        if run is not None:
            assert run.wait(60)
        svc.extra.pop("client", None)


def _recorded_job(api: Api) -> tuple[int, int]:
    """A job recorded (not run) on the scan: (job id, id of its first step's program)."""
    plan = prepare(find_recipe("xrf-map"), api.scan, {})
    job = record_plan(plan, lims=api.services.lims)
    return job.job_id, next(iter(job.programs.values()))


# ---------------------------------------------------------------- users and tokens


def test_me_and_tokens(api):
    r = api.get("/api/me")
    assert r.status_code == 200
    assert r.json() == {"name": "alice", "staff": False, "visits": ["cm12345-1"]}
    assert api.get("/api/me", "staff").json()["staff"] is True
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        r = api.http.get("/api/me", headers=headers)
        assert r.status_code == 401 and "token" in r.json()["detail"]
    assert api.http.get("/api/visits/cm12345-1/jobs").status_code == 401
    assert api.http.post("/api/jobs", json={}).status_code in (401, 422)
    # Only hashes are stored: no token text in the users file (nor its WAL).
    users = api.services.settings.users_path
    blob = b"".join(p.read_bytes() for p in users.parent.glob(users.name + "*"))
    assert blob and not any(t.encode() in blob for t in api.tokens.values())
    hashes = sqlite3.connect(users).execute("SELECT hash FROM tokens").fetchall()
    assert len(hashes) == 3 and all(len(h) == 64 for (h,) in hashes)


def test_openapi_lists_the_endpoints(api):
    paths = api.http.get("/openapi.json").json()["paths"]
    for path in (
        "/api/me",
        "/api/recipes",
        "/api/recipes/{name}",
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/reprocess",
        "/api/jobs/{job_id}/approve",
        "/api/jobs/{job_id}/reject",
        "/api/jobs/{job_id}/events",
        "/api/jobs/{job_id}/attachments/{attachment_id}",
        "/api/visits/{visit}/jobs",
    ):
        assert path in paths, path


# ---------------------------------------------------------------- recipes


def test_recipes(api):
    names = {r["name"] for r in api.get("/api/recipes").json()}
    assert {"xrf-map", "xrd-map", "xafs-b18"} <= names
    i18 = {r["name"] for r in api.get("/api/recipes", params={"beamline": "i18"}).json()}
    assert "xrf-map" in i18 and "xafs-b18" not in i18
    for_scan = api.get("/api/recipes", params={"scan": str(api.scan)}).json()
    assert {"xrf-map", "xrd-map"} <= {r["name"] for r in for_scan}
    assert "xrd-ct" not in {r["name"] for r in for_scan}  # a map, not a rotation scan
    one = api.get("/api/recipes/xrf-map").json()
    assert one["name"] == "xrf-map" and one["applies_to"]["beamlines"] == ["i18"]
    assert one["parameters_schema"]["properties"]["window_width"]["maximum"] == 1000
    r = api.get("/api/recipes/no-such")
    assert r.status_code == 404 and "no-such" in r.json()["detail"]


def test_scan_outside_the_data_roots_is_403(api, sim_scan, tmp_path):
    r = api.get("/api/recipes", params={"scan": str(sim_scan.path)})
    assert r.status_code == 403 and "outside the data roots" in r.json()["detail"]
    r = api.get("/api/recipes", params={"scan": str(api.data / ".." / "home")})
    assert r.status_code == 403
    link = api.data / "scans" / "elsewhere.nxs"
    link.symlink_to(sim_scan.path)
    assert api.get("/api/recipes", params={"scan": str(link)}).status_code == 403
    r = api.post("/api/jobs", {"recipe": "xrf-map", "scan_file": str(sim_scan.path)})
    assert r.status_code == 403
    # bob may not look at a scan of cm12345-1 either
    assert api.get("/api/recipes", "bob", params={"scan": str(api.scan)}).status_code == 403


# ---------------------------------------------------------------- submitting


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"window_width": "wide"}, ["window_width", "wide"]),  # bad type
        ({"window_width": [1, 2]}, ["window_width"]),  # bad type
        ({"window_width": 0}, ["window_width", "0"]),  # out of range
        ({"window_width": 5000}, ["window_width", "5000"]),  # out of range
        ({"nope": 1}, ["unknown parameter", "nope"]),
    ],
)
def test_bad_parameters_are_422_naming_them(api, parameters, words):
    r = api.post(
        "/api/jobs", {"recipe": "xrf-map", "scan_file": str(api.scan), "parameters": parameters}
    )
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    for word in words:
        assert word in detail
    assert api.services.lims.jobs() == []  # nothing recorded


def test_bad_requests_are_422(api):
    r = api.post("/api/jobs", {"recipe": "no-such", "scan_file": str(api.scan)})
    assert r.status_code == 422 and "no-such" in r.json()["detail"]
    missing = api.data / "scans" / "missing.nxs"
    r = api.post("/api/jobs", {"recipe": "xrf-map", "scan_file": str(missing)})
    assert r.status_code == 422 and r.json()["detail"]
    assert api.post("/api/jobs", {"recipe": "xrf-map"}).status_code == 422


def test_submit_run_reprocess_and_follow(api):
    r = api.post(
        "/api/jobs",
        {"recipe": "xrf-map", "scan_file": str(api.scan), "parameters": {"window_width": 30}},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    job_id = body["job_id"]
    assert body == {
        "job_id": job_id,
        "url": f"/jobs/{job_id}",
        "events": f"/api/jobs/{job_id}/events",
    }
    job = api.wait_job(job_id)
    assert job["status"] == "success" and job["recipe"] == "xrf-map"
    assert job["parameters"]["window_width"] == 30 and job["automatic"] is False
    assert job["visit"] == "cm12345-1" and job["scan_file"] == str(api.scan)
    (step,) = job["steps"]
    assert step["step_id"] == "windows" and step["status"] == "success"
    assert step["start"] and step["end"]
    assert step["environment"]["dask_dashboard"].startswith("http")
    assert step["messages"]
    (att,) = [a for a in step["attachments"] if a["name"].endswith(".nxs")]
    assert att["url"] == f"/api/jobs/{job_id}/attachments/{att['id']}"
    got = api.get(att["url"])
    assert got.status_code == 200 and got.content[:8] == b"\x89HDF\r\n\x1a\n"

    # The event stream of a finished job: its status, then the end.
    events = _events(api, job_id)
    assert [e for e, _ in events] == ["status", "end"]
    assert events[-1][1]["steps"][0]["status"] == "success"

    # Reprocess with a new window: a new job, linked to the original.
    r = api.post(f"/api/jobs/{job_id}/reprocess", {"parameters": {"window_width": 10}})
    assert r.status_code == 202, r.text
    again = r.json()["job_id"]
    assert again != job_id
    # Follow it live: status events until every step is final, then an end event.
    events = _events(api, again)
    assert events[0][0] == "status" and events[-1][0] == "end"
    assert all(e == "status" for e, _ in events[:-1])
    assert [s["status"] for s in events[-1][1]["steps"]] == ["success"]
    new = api.wait_job(again)
    assert new["parameters"][REPROCESS_OF] == job_id and new["reprocess_of"] == job_id
    assert new["parameters"]["window_width"] == 10
    assert f"reprocess of job {job_id}" in new["comments"]
    bad = api.post(f"/api/jobs/{job_id}/reprocess", {"parameters": {"window_width": -1}})
    assert bad.status_code == 422 and "window_width" in bad.json()["detail"]

    # The visit's listing, with its filters.
    rows = api.get("/api/visits/cm12345-1/jobs").json()
    assert [r["id"] for r in rows] == [again, job_id]
    assert rows[0]["status"] == "success" and rows[0]["visit"] == "cm12345-1"
    assert len(api.get("/api/visits/cm12345/jobs", params={"limit": 1}).json()) == 1
    assert api.get("/api/visits/cm12345-1/jobs", params={"recipe": "xrd-map"}).json() == []
    assert len(api.get("/api/visits/cm12345-1/jobs", params={"state": "success"}).json()) == 2
    assert api.get("/api/visits/cm12345-1/jobs", params={"state": "failed"}).json() == []
    assert api.get("/api/visits/cm12345-1/jobs", params={"search": "zzz-nothing"}).json() == []
    r = api.get("/api/visits/cm12345-1/jobs", params={"state": "bogus"})
    assert r.status_code == 422 and "bogus" in r.json()["detail"]

    # Another visit's user sees none of it (404, as for a job that does not exist) ...
    for url in (
        f"/api/jobs/{job_id}",
        f"/api/jobs/{job_id}/events",
        att["url"],
        "/api/visits/cm12345-1/jobs",
        "/api/visits/cm12345/jobs",
    ):
        r = api.get(url, "bob")
        assert r.status_code == 404, (url, r.text)
    assert api.get(f"/api/jobs/{job_id}", "bob").json() == api.get("/api/jobs/999999").json() | {
        "detail": f"no job {job_id}"
    }
    assert api.post(f"/api/jobs/{job_id}/reprocess", {}, "bob").status_code == 404
    r = api.post("/api/jobs", {"recipe": "xrf-map", "scan_file": str(api.scan)}, "bob")
    assert r.status_code == 403 and "cm12345-1" in r.json()["detail"]
    assert api.get("/api/visits/cm11111-1/jobs", "bob").json() == []
    # ... and staff see everything.
    assert api.get(f"/api/jobs/{job_id}", "staff").status_code == 200
    assert api.get(att["url"], "staff").status_code == 200
    assert len(api.get("/api/visits/cm12345-1/jobs", "staff").json()) == 2


def _events(api: Api, job_id: int) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    with api.http.stream("GET", f"/api/jobs/{job_id}/events", headers=api.h("alice")) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
    return out


def test_unknown_job_is_404(api):
    for url in ("/api/jobs/424242", "/api/jobs/424242/events", "/api/jobs/424242/attachments/1"):
        r = api.get(url)
        assert r.status_code == 404 and r.json()["detail"] == "no job 424242"
    assert api.post("/api/jobs/424242/reprocess", {}).status_code == 404


# ---------------------------------------------------------------- approval


def _awaiting_job(api: Api) -> int:
    """A job recorded as the launcher records one of a recipe that needs approval."""
    plan = prepare(find_recipe("xrf-map"), api.scan, {"window_width": 25})
    return record_plan(plan, lims=api.services.lims, automatic=True, awaiting_approval=True).job_id


def test_staff_approve_or_reject_jobs_awaiting_approval(api):
    job_id = _awaiting_job(api)
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["awaiting_approval"] is True and job["approval"] == "awaiting"
    assert job["status"] == "queued" and job["automatic"] is True
    assert [s["status"] for s in job["steps"]] == ["queued"]
    # Only staff decide: the visit's own user and another visit's user are refused.
    for who in ("alice", "bob"):
        r = api.post(f"/api/jobs/{job_id}/approve", {}, who)
        assert r.status_code == 403 and "staff" in r.json()["detail"], r.text
        assert api.post(f"/api/jobs/{job_id}/reject", {}, who).status_code == 403
    time.sleep(0.5)
    assert api.get(f"/api/jobs/{job_id}").json()["status"] == "queued"  # nothing ran

    r = api.post(f"/api/jobs/{job_id}/approve", {}, "staff")
    assert r.status_code == 202, r.text
    assert r.json()["job_id"] == job_id  # it runs as recorded, under the same id
    done = api.wait_job(job_id)
    assert done["status"] == "success" and done["awaiting_approval"] is False
    assert done["approval"].startswith("approved by admin at ")
    assert done["parameters"]["window_width"] == 25
    r = api.post(f"/api/jobs/{job_id}/approve", {}, "staff")
    assert r.status_code == 409 and "not awaiting approval: approved by admin" in r.json()["detail"]

    # Rejected: the steps are skipped with the reason; it can then be neither approved nor
    # rejected again.
    other = _awaiting_job(api)
    r = api.post(f"/api/jobs/{other}/reject", {"reason": "beam dump:\nredo the scan"}, "staff")
    assert r.status_code == 200, r.text
    job = api.get(f"/api/jobs/{other}").json()
    assert job["status"] == "skipped" and job["awaiting_approval"] is False
    assert job["approval"].startswith("rejected by admin at ")
    assert job["approval"].endswith(": beam dump: redo the scan")
    (step,) = job["steps"]
    assert step["status"] == "skipped" and "beam dump: redo the scan" in step["message"]
    for action in ("approve", "reject"):
        r = api.post(f"/api/jobs/{other}/{action}", {}, "staff")
        assert r.status_code == 409 and "rejected by admin" in r.json()["detail"]

    # A job that never needed approval, and one that does not exist.
    manual, _pid = _recorded_job(api)
    r = api.post(f"/api/jobs/{manual}/approve", {}, "staff")
    assert r.status_code == 409 and r.json()["detail"] == f"job {manual} does not need approval"
    assert api.post("/api/jobs/424242/approve", {}, "staff").status_code == 404


def test_users_of_the_visit_cancel_jobs(api):
    """Cancel: any user of the job's visit; recorded once; the job's runner then skips what
    has not started. Ended jobs, held jobs and other visits' jobs are refused."""
    job_id, _pid = _recorded_job(api)
    assert api.post(f"/api/jobs/{job_id}/cancel", {}, "bob").status_code == 404
    r = api.post(f"/api/jobs/{job_id}/cancel", {"reason": "wrong\nsample"})
    assert r.status_code == 202, r.text
    text = r.json()["cancelled"]
    assert text.startswith("cancelled by alice at ") and text.endswith(": wrong sample")
    assert api.get(f"/api/jobs/{job_id}").json()["cancelled"] == text
    listed = {j["id"]: j["cancelled"] for j in api.get("/api/visits/cm12345-1/jobs").json()}
    assert listed[job_id] is True
    r = api.post(f"/api/jobs/{job_id}/cancel", {}, "staff")
    assert r.status_code == 409 and r.json()["detail"] == f"job {job_id} is {text}"
    # The web service's own runner starts it: it sees the cancel and runs nothing.
    plan, job = recorded_plan(api.services.lims.job(job_id))
    runner(api.services).start(plan, job)
    done = api.wait_job(job_id)
    assert done["status"] == "skipped"
    assert [s["message"] for s in done["steps"]] == [f"skipped: {text}"]
    r = api.post(f"/api/jobs/{job_id}/cancel", {})
    assert r.status_code == 409
    held = _awaiting_job(api)
    r = api.post(f"/api/jobs/{held}/cancel", {}, "staff")
    assert r.status_code == 409 and "reject it instead" in r.json()["detail"]
    assert api.post("/api/jobs/424242/cancel", {}).status_code == 404


def test_approval_waits_while_the_job_cannot_run(api):
    """A job whose scan file is gone stays awaiting approval (422), so staff can reject it."""
    job_id = _awaiting_job(api)
    api.scan.rename(api.scan.with_suffix(".moved"))
    r = api.post(f"/api/jobs/{job_id}/approve", {}, "staff")
    assert r.status_code == 422 and api.scan.name in r.json()["detail"], r.text
    assert api.get(f"/api/jobs/{job_id}").json()["awaiting_approval"] is True
    assert api.post(f"/api/jobs/{job_id}/reject", {}, "staff").status_code == 200


# ---------------------------------------------------------------- attachments


def test_attachments_are_served_only_from_the_data_roots(api, tmp_path):
    job_id, pid = _recorded_job(api)
    lims = api.services.lims
    inside = api.data / "scans" / "note.txt"
    inside.write_text("fine")
    outside = tmp_path / "secret.txt"  # beside the data root, not under it
    outside.write_text("secret")
    link = api.data / "scans" / "passwd"
    link.symlink_to("/etc/passwd")
    lims.add_attachment(pid, inside, "Log")
    lims.add_attachment(pid, Path(f"{api.data}/scans/../../secret.txt"), "Log")
    lims.add_attachment(pid, link, "Log")
    lims.add_attachment(pid, api.data / "scans" / "gone.txt", "Log")
    atts = api.get(f"/api/jobs/{job_id}").json()["steps"][0]["attachments"]
    ok, dotdot, symlink, gone = atts
    assert ".." in dotdot["path"]
    r = api.get(ok["url"])
    assert r.status_code == 200 and r.text == "fine"
    for a in (dotdot, symlink):
        r = api.get(a["url"])
        assert r.status_code == 403, r.text
        assert "outside the data roots" in r.json()["detail"]
    assert api.get(gone["url"]).status_code == 404
    # an attachment of another job, through this job's URL
    other_id, other_pid = _recorded_job(api)
    lims.add_attachment(other_pid, inside, "Log")
    other = api.get(f"/api/jobs/{other_id}").json()["steps"][0]["attachments"][0]
    r = api.get(f"/api/jobs/{job_id}/attachments/{other['id']}")
    assert r.status_code == 404
    assert api.get(f"/api/jobs/{other_id}/attachments/{other['id']}").status_code == 200
    assert api.get(ok["url"], "bob").status_code == 404


def test_events_stream_a_running_job(api):
    """A job whose steps change while the stream is open: each change is a status event."""
    job_id, pid = _recorded_job(api)
    lims = api.services.lims
    import threading

    def move() -> None:
        time.sleep(0.3)
        lims.set_status(pid, Status.RUNNING)
        time.sleep(0.3)
        lims.set_progress(pid, "12/48 points")
        time.sleep(0.3)
        lims.set_status(pid, Status.SUCCESS, "done")

    mover = threading.Thread(target=move)
    mover.start()
    events = _events(api, job_id)
    mover.join()
    kinds = [e for e, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "end" and kinds.count("end") == 1
    statuses = [d["steps"][0]["status"] for _, d in events]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "success"
    assert any(d["steps"][0]["message"] == "12/48 points" for _, d in events)
    assert events[-1][1]["status"] == "success"


# ---------------------------------------------------------------- CLI


def test_cli_users_and_serve(cli, tmp_path, monkeypatch):
    result = cli("users", "add", "carol", "--visit", "cm12345-1", "--visit", "cm99")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    from hpcproc.web.auth import Users

    home = Path(os.environ["HPCPROC_HOME"])
    users = Users(home / "web-users.sqlite")
    try:
        user = users.user(token)
        assert user is not None and user.visits == {"cm12345-1", "cm99"} and not user.staff
        assert cli("users", "revoke", "carol").exit_code == 0
        assert users.user(token) is None
    finally:
        users.close()
    assert cli("users", "add", "bad name!").exit_code == 2

    seen = {}

    def fake_run(app, host, port):
        seen.update(app=app, host=host, port=port)

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", fake_run)
    data = tmp_path / "d"
    data.mkdir()
    result = cli("serve", "--port", "8123", "--data-root", data, "--cluster", "local")
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["app"].title == "hpcproc"
    result = cli("serve", "--root-path", "/hpcproc/", "--data-root", data)
    assert result.exit_code == 0, result.output
    assert [m.kwargs["prefix"] for m in seen["app"].user_middleware] == ["/hpcproc"]
    result = cli("serve", "--root-path", "/a b", "--data-root", data)
    assert result.exit_code == 2 and "not a plain URL path" in result.output


def test_published_under_a_path_by_a_reverse_proxy(tmp_path, monkeypatch, sim_scan):
    """--root-path /hpcproc: requests are answered whether the proxy passes the prefix on or
    takes it off, and every URL the service gives out (API, redirects, page links) has it."""
    app, scan = web_app(tmp_path, monkeypatch, sim_scan, "hpcproc/")
    with TestClient(app) as http:
        svc = app.state.services
        h = {"Authorization": f"Bearer {svc.users.add('alice', ['cm12345-1'])}"}
        plan = prepare(find_recipe("xrf-map"), scan, {})
        job_id = record_plan(plan, lims=svc.lims).job_id
        for path in (f"/hpcproc/api/jobs/{job_id}", f"/api/jobs/{job_id}"):
            r = http.get(path, headers=h)
            assert r.status_code == 200, (path, r.text)
            assert r.json()["url"] == f"/hpcproc/jobs/{job_id}"
            assert r.json()["events"] == f"/hpcproc/api/jobs/{job_id}/events"
        r = http.get(f"/hpcproc/jobs/{job_id}", follow_redirects=False)  # not logged in
        assert r.status_code == 303
        assert r.headers["location"] == f"/hpcproc/login?next=%2Fhpcproc%2Fjobs%2F{job_id}"
        r = http.get(f"/hpcproc/jobs/{job_id}", headers=h)
        assert r.status_code == 200 and 'data-root="/hpcproc"' in r.text
        links = re.findall(r'(?:href|src|action|data-src)="(/[^"]*)"', r.text)
        assert len(links) >= 4 and all(link.startswith("/hpcproc/") for link in links), links
        r = http.post("/hpcproc/login", data={"token": "wrong", "next": "//evil.example/"})
        assert r.status_code == 401 and 'value="/hpcproc/"' in r.text  # never off the site
    with pytest.raises(InputError, match="not a plain URL path"):
        Settings(root_path="/a/../b")


def test_recipes_for_a_real_gda_scan_use_its_layout(api):
    """The I18 Xspress3 map as GDA writes it (tests/data/real): xrf-map applies through the
    layout's mca role, though the file has none of the simulator's paths."""
    real = Path(__file__).parent / "data" / "real" / "xrf" / "i18_test_data.nxs"
    path = api.data / "scans" / real.name
    shutil.copy(real, path)
    with h5py.File(path, "r+") as f:  # the visit and beamline GDA would have written
        f["/entry1/experiment_identifier"] = "cm12345-1"
        f["/entry1/instrument/name"] = "i18"
    found = {r["name"] for r in api.get("/api/recipes", params={"scan": str(path)}).json()}
    assert "xrf-map" in found and "xrd-map" not in found
