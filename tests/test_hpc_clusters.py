"""Recipes on real batch clusters: a single-node Slurm and a single-node Grid Engine on this
machine (started by slurm/slurm.sh and slurm/sge.sh, as .ci/run does), Dask workers submitted
as batch jobs by dask-jobqueue. Results must equal the LocalCluster's; every mistake in a
profile is one clear line before anything is submitted; a worker's batch job killed mid-step
leaves a reason in the LIMS and no step running."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import dask
import h5py
import numpy as np
import pytest

from hpcproc.dispatch.batch import batch_jobs, job_states
from hpcproc.dispatch.clusters import load_profile, open_client
from hpcproc.errors import InputError, RecipeError
from hpcproc.jobs import prepare, run_job, run_plan
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan
from hpcproc.recipes import find_recipe, load_recipe_text
from hpcproc.status import Status

SCRIPTS = Path(__file__).resolve().parents[1] / "slurm"


def _up(script: str) -> None:
    """Start the scheduler with its script (a no-op when it is up); skip saying why if not."""
    path = SCRIPTS / script
    if subprocess.run(["bash", str(path), "status"], capture_output=True).returncode == 0:
        return
    done = subprocess.run(["bash", str(path), "start"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"{script} start failed: {(done.stderr or done.stdout).strip()[-300:]}")


@pytest.fixture(scope="module")
def slurm():
    _up("slurm.sh")


@pytest.fixture(scope="module")
def sge():
    _up("sge.sh")
    env = subprocess.run(["bash", str(SCRIPTS / "sge.sh"), "env"], capture_output=True, text=True)
    saved = dict(os.environ)
    for line in env.stdout.splitlines():  # export NAME=value lines
        name, _, value = line.removeprefix("export ").partition("=")
        os.environ[name.strip()] = value.strip().strip("'\"")
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(params=["slurm", "sge"])
def batch(request):
    request.getfixturevalue(request.param)
    return request.param


def _profile(tmp_path: Path, kind: str, **batch: object) -> Path:
    """The shipped profile of ``kind`` with some batch settings changed, as a file."""
    shipped = load_profile(kind)
    data = shipped.model_dump(mode="json", exclude_none=True)
    data["batch"].update(batch)
    path = tmp_path / f"{kind}-test.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def xrf_scan(tmp_path_factory):
    return simulate_scan(
        tmp_path_factory.mktemp("hpc"), SimulationConfig(map_shape=(4, 6), xrd=False, seed=3)
    ).path


def _arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiu"
                else None
            )
        )
    return out


def test_recipe_on_a_batch_cluster_equals_local(batch, tmp_path, xrf_scan, lims, client):
    plan = prepare(find_recipe("xrf-map"), xrf_scan, {})
    local = run_plan(plan, lims=lims, client=client)
    with open_client(load_profile(str(_profile(tmp_path, batch)))) as remote:
        cluster = remote.cluster
        assert type(cluster).__name__ == {"slurm": "SLURMCluster", "sge": "SGECluster"}[batch]
        ours = set(batch_jobs(cluster).values())
        outcome = run_plan(plan, lims=lims, client=remote, cluster=batch)
    assert local.status == outcome.status == "success"
    a, b = _arrays(local.processed), _arrays(outcome.processed)
    assert a.keys() == b.keys()
    assert sum(k.startswith("entry/windows/") for k in a) >= 2, sorted(a)  # maps and axes
    for key in a:
        if "time" not in key and "provenance" not in key:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The step's environment names the batch jobs its workers ran in, and the scheduler
    # knows them as jobs of ours.
    (step,) = lims.job(outcome.job_id).steps
    env = step.environment
    assert env["batch_system"] == batch and env["cluster"] == batch
    assert env["queue"] == ("debug" if batch == "slurm" else "all.q")
    jobs = set(env["batch_jobs"].split(","))
    assert jobs and jobs & ours and env["hosts"]
    assert set(job_states(batch, jobs)) == jobs


@pytest.mark.parametrize("kind", ["slurm", "sge"])
def test_unknown_queue_interface_or_walltime_are_refused_before_submitting(kind, tmp_path, request):
    request.getfixturevalue(kind)
    bad = load_profile(str(_profile(tmp_path, kind, queue="nosuch")))
    known = r"queue 'nosuch' is not a .* \(known: .*(debug|all\.q)"
    with pytest.raises(InputError, match=known), open_client(bad):
        pass
    bad = load_profile(str(_profile(tmp_path, kind, interface="ib-none")))
    missing = r"network interface 'ib-none' does not exist .* lo"
    with pytest.raises(InputError, match=missing), open_client(bad):
        pass
    short = "short" if kind == "slurm" else "short.q"
    bad = load_profile(str(_profile(tmp_path, kind, queue=short, walltime="01:00:00")))
    too_long = rf"walltime 01:00:00 is longer than queue '{short}' allows \(00:01:00\)"
    with pytest.raises(InputError, match=too_long), open_client(bad):
        pass
    bad = load_profile(str(_profile(tmp_path, kind, memory="2GB", max_memory="4TB")))
    too_big = r"batch jobs of up to 4TB \(batch.max_memory\) do not fit the largest node of queue"
    with pytest.raises(InputError, match=too_big + r" '.*' \(\d+\.\d GiB\)"), open_client(bad):
        pass
    kw = "squeue" if kind == "slurm" else "qstat"
    mine = subprocess.run([kw], capture_output=True, text=True).stdout
    assert "nosuch" not in mine  # nothing was submitted


def test_slurm_durations():
    from hpcproc.dispatch.batch import slurm_duration

    cases = {"1:00": 60, "30": 1800, "2:00:00": 7200, "1-00:00:00": 86400, "2-12": 216000,
             "infinite": None, "UNLIMITED": None}  # fmt: skip
    assert {text: slurm_duration(text) for text in cases} == cases


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("name: bad\nkind: slurm\n", r"bad\.yaml.*needs a batch: block"),
        ("name: bad\nkind: slurm\nbatch:\n  queue: debug\n  memory: lots\n",
         r"bad\.yaml:5:\d+: .*'lots' is not a size"),
        ("name: bad\nkind: sge\nbatch:\n  walltime: 90 minutes\n",
         r"bad\.yaml:4:\d+: .*not HH:MM:SS"),
        ("name: bad\nkind: slurm\nbatch:\n  quue: debug\n",
         r"bad\.yaml:4:3: .*unknown key 'quue'"),
    ],
)  # fmt: skip
def test_profiles_are_validated_with_file_line_col(tmp_path, text, error):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError, match=error):
        load_profile(str(bad))


def _slow_command(seconds: float) -> str:
    recipe = {
        "name": "slow",
        "steps": [
            {
                "id": "slow",
                "uses": "command",
                "phase": "downstream",
                "with": {"program": "sleep", "args": [str(seconds)]},
            }
        ],
    }
    return json.dumps(recipe)


@pytest.mark.parametrize("allowed_failures", [0, 3])
def test_a_worker_job_killed_mid_step_is_recorded(
    slurm, tmp_path, xrf_scan, lims, allowed_failures
):
    """scancel the batch job of the worker running a step: with no second chance allowed the
    step fails naming the cancelled job; with Dask's retries a new batch job takes the task
    over and the step succeeds, the cancelled job recorded. Never left running."""
    profile = load_profile(str(_profile(tmp_path, "slurm", adaptive={"minimum": 1, "maximum": 1})))
    failures = {"distributed.scheduler.allowed-failures": allowed_failures}
    with dask.config.set(failures), open_client(profile) as remote:
        first = set(batch_jobs(remote.cluster).values())
        killer = threading.Thread(target=_cancel_when_busy, args=(remote, first))
        killer.start()
        outcome = run_job(load_recipe_text(_slow_command(6)), xrf_scan, {},
                          lims=lims, client=remote, cluster="slurm")  # fmt: skip
        killer.join(30)
    (step,) = lims.job(outcome.job_id).steps
    (cancelled,) = first
    said = " ".join([step.message or ""] + [m.message for m in step.messages])
    assert f"batch job {cancelled} CANCELLED" in said, said
    if allowed_failures == 0:
        assert step.status is Status.FAILED
        assert "workers lost" in step.message and cancelled in step.message
    else:
        assert step.status is Status.SUCCESS, step.message
        assert len(step.environment["batch_jobs"].split(",")) >= 2  # a new job took over


def _cancel_when_busy(client, jobs: set[str]) -> None:
    """scancel the worker's job once it is running a task (the step's finish)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(client.processing().values()):
            time.sleep(1.0)
            subprocess.run(["scancel", *jobs], check=True)
            return
        time.sleep(0.1)


# ---------------------------------------------------------------- sizing and per-step pools


def test_a_step_no_worker_can_hold_is_refused_before_anything_is_recorded(tmp_path, lims):
    """An XRD-CT reconstruction of 1800 angles x 4001 positions: ~30 GiB per part of 32 q
    bins. The shipped slurm profile allows 8 GB per job: refused, naming the step, what it
    needs and why; nothing is recorded. With smaller parts it fits once workers grow."""
    from dataclasses import replace

    from hpcproc.dispatch.plan import make_plan
    from hpcproc.dispatch.sizing import step_profiles
    from hpcproc.nexus.xrdct_sim import XrdCtConfig, simulate_xrdct

    scan = simulate_xrdct(tmp_path, XrdCtConfig(n_theta=4, n_x=24, frame_shape=(64, 64))).path
    recipe = find_recipe("xrd-ct")
    plan = prepare(recipe, scan, {})
    big = make_plan(recipe, replace(plan.scan, shape=(1800, 4001)), {})
    slurm = load_profile("slurm")
    with pytest.raises(InputError) as err:
        step_profiles(big, slurm)
    said = str(err.value)
    assert "step 'reconstruct' needs about" in said and "GiB per worker" in said
    assert "1800 angles x 4001 positions" in said
    assert "cluster profile 'slurm' gives a worker at most 7.5 GiB (batch.max_memory)" in said
    with pytest.raises(InputError, match="step 'reconstruct' needs about"):
        run_plan(big, lims=lims, client=None, cluster="slurm")  # type: ignore[arg-type]
    assert lims.jobs() == []  # refused before it was recorded
    # Fewer q bins per part: fits once the workers are given more memory (up to 8 GB).
    smaller = replace(big, steps=[
        replace(s, params=s.params.model_copy(update={"chunk": 8})) if s.id == "reconstruct"
        else s for s in big.steps
    ])  # fmt: skip
    sized = step_profiles(smaller, slurm)
    assert sized["integrate"] is slurm  # the live step fits as it is
    grown = sized["reconstruct"].batch
    assert grown is not None and slurm.batch.worker_memory < grown.worker_memory <= 8e9


def _two_pool_recipe(memory: str | None = None, cluster: str | None = None) -> str:
    resources = {k: v for k, v in (("memory", memory), ("cluster", cluster)) if v}
    recipe = {
        "name": "two-pools",
        "steps": [
            {"id": "windows", "uses": "xrf_windows", "phase": "live",
             "with": {"elements": ["Fe-Ka", "Cu-Ka"]}},
            {"id": "tool", "uses": "command", "phase": "downstream", "needs": ["windows"],
             "with": {"program": "hostname"},
             "resources": resources},
        ],
    }  # fmt: skip
    return json.dumps(recipe)


def test_a_bigger_step_gets_its_own_pool_released_when_the_job_ends(
    slurm, tmp_path, xrf_scan, lims
):
    """The job's workers have 1 GB; a step asking for 3 GB runs in a pool of its own whose
    batch jobs ask Slurm for it, and which is gone when the job ends."""
    profile = load_profile(str(_profile(tmp_path, "slurm", memory="1GB")))
    with open_client(profile) as remote:
        own = set(batch_jobs(remote.cluster).values())
        outcome = run_job(load_recipe_text(_two_pool_recipe(memory="3GB")), xrf_scan, {},
                          lims=lims, client=remote, cluster=str(_profile(tmp_path, "slurm",
                          memory="1GB")))  # fmt: skip
    assert outcome.status == "success", lims.job(outcome.job_id).steps
    steps = {s.step_id: s for s in lims.job(outcome.job_id).steps}
    live, tool = steps["windows"].environment, steps["tool"].environment
    assert set(live["batch_jobs"].split(",")) <= own
    pool = set(tool["batch_jobs"].split(","))
    assert pool and not pool & own  # other batch jobs ...
    for job in pool:  # ... that asked Slurm for 3 GiB, and ended with the job
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
        state = job_states("slurm", [job])[job]
        assert state.state != "RUNNING", state
        if shown.returncode == 0:
            assert "mem=3G" in shown.stdout.replace("3072M", "3G"), shown.stdout


def _pending_pool(tmp_path: Path, monkeypatch, **batch: object) -> None:
    """A profile 'later' whose batch jobs Slurm holds for an hour (--begin), on the path."""
    profiles = tmp_path / "profiles"
    profiles.mkdir(exist_ok=True)
    data = json.loads(_profile(tmp_path, "slurm", job_directives=["--begin=now+3600"], **batch)
                      .read_text())  # fmt: skip
    data["name"] = "later"
    (profiles / "later.yaml").write_text(json.dumps(data))
    monkeypatch.setenv("HPCPROC_CLUSTER_PATH", str(profiles))


def _squeue() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    return set(out.split())


def test_a_pool_that_never_starts_fails_its_step_only(
    slurm, tmp_path, xrf_scan, lims, client, monkeypatch
):
    """The downstream step's pool stays pending past its start_timeout: that step fails saying
    so (the batch job's state named), the live step's results are kept, the job is not aborted,
    and the pending batch job is removed."""
    _pending_pool(tmp_path, monkeypatch, start_timeout=3)
    before = _squeue()
    text = _two_pool_recipe(cluster="later")
    outcome = run_job(load_recipe_text(text), xrf_scan, {}, lims=lims, client=client)
    steps = {s.step_id: s for s in lims.job(outcome.job_id).steps}
    assert steps["windows"].status is Status.SUCCESS
    assert steps["tool"].status is Status.FAILED
    assert steps["tool"].message.startswith("no Dask worker joined within 3 s: batch job ")
    assert "PENDING" in steps["tool"].message, steps["tool"].message
    assert _squeue() <= before  # its batch job went with the pool


def test_cancelling_a_job_whose_pool_waits_in_the_queue(
    slurm, tmp_path, xrf_scan, lims, client, monkeypatch
):
    """A step waits for its pool's batch job, pending in Slurm; the job is cancelled: it ends
    at once (not at the start timeout), the step failing with the cancel, the batch job gone."""
    from launch_helpers import Background, wait_for

    from hpcproc.cancel import request_cancel

    _pending_pool(tmp_path, monkeypatch, start_timeout=600)
    before = _squeue()
    recipe = load_recipe_text(_two_pool_recipe(cluster="later"))
    job = Background(lambda: run_job(recipe, xrf_scan, {}, lims=lims, client=client))
    pending = wait_for("the pool's batch job", lambda: _squeue() - before, 120)
    job_id = lims.jobs(1)[0].id
    text = request_cancel(lims, job_id, "tester", "queue too long")
    outcome = job.result(60)  # far less than the 600 s start timeout
    steps = {s.step_id: s for s in lims.job(outcome.job_id).steps}
    assert steps["windows"].status is Status.SUCCESS
    assert (steps["tool"].status, steps["tool"].message) == (Status.FAILED, text)
    assert not pending & _squeue()


def test_steps_of_one_job_on_a_local_cluster_and_on_grid_engine(
    sge, tmp_path, xrf_scan, lims, client, monkeypatch
):
    """resources.cluster sends one step elsewhere: the live step runs on the LocalCluster,
    the downstream command on Grid Engine workers."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "gridengine.yaml").write_text(
        _profile(tmp_path, "sge").read_text().replace('"name": "sge"', '"name": "gridengine"')
    )
    monkeypatch.setenv("HPCPROC_CLUSTER_PATH", str(profiles))
    text = _two_pool_recipe(cluster="gridengine")
    outcome = run_job(load_recipe_text(text), xrf_scan, {}, lims=lims, client=client)
    assert outcome.status == "success"
    steps = {s.step_id: s for s in lims.job(outcome.job_id).steps}
    assert steps["windows"].environment["cluster"] == "local"
    assert "batch_jobs" not in steps["windows"].environment
    tool = steps["tool"].environment
    assert tool["cluster"] == "gridengine" and tool["batch_system"] == "sge"
    assert tool["queue"] == "all.q" and tool["batch_jobs"]


# ---------------------------------------------------------------- walltime


def test_live_scan_outlasts_its_workers_walltime(slurm, tmp_path, lims, client):
    """Workers of a 1-minute walltime leave after ~30 s (drain_before 40 s, staggered); a live
    scan written over ~45 s is processed across the replacement batch jobs with no point lost:
    the maps equal the LocalCluster's processing of the same file."""
    from launch_helpers import start_writer

    profile = _profile(tmp_path, "slurm", walltime="00:01:00", drain_before="00:00:40",
                       stagger="00:00:04", adaptive={"minimum": 1, "maximum": 2})  # fmt: skip
    writer, scan = start_writer(
        tmp_path / "data", "--no-xrd", "--map", "9x10", "--rate", "2", "--scan-number", "61"
    )
    plan = prepare(find_recipe("xrf-map"), scan, {})
    with open_client(load_profile(str(profile))) as remote:
        first = set(batch_jobs(remote.cluster).values())
        outcome = run_plan(plan, lims=lims, client=remote, cluster=str(profile))
    assert writer.wait(60) == 0
    assert outcome.status == "success", lims.job(outcome.job_id).steps[0].message
    (step,) = lims.job(outcome.job_id).steps
    used = set(step.environment["batch_jobs"].split(","))
    assert len(used) >= 2 and first <= used, used  # the first job left; others took over
    states = job_states("slurm", first)
    assert all(s.state != "TIMEOUT" for s in states.values()), states  # left before walltime
    offline = run_plan(prepare(find_recipe("xrf-map"), scan, {}), lims=lims, client=client)
    a, b = _arrays(outcome.processed), _arrays(offline.processed)
    for key in a:
        if key.startswith("entry/windows/") and a[key].ndim >= 2:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_worker_killed_at_its_walltime_gives_the_reason(sge, tmp_path, xrf_scan, lims):
    """Grid Engine kills a worker's batch job at its h_rt (20 s here, a directive overriding
    the profile's walltime) while a step runs on it: the step fails saying so."""
    profile = load_profile(str(_profile(tmp_path, "sge", job_directives=["-l h_rt=20"],
                                        adaptive={"minimum": 1, "maximum": 1})))  # fmt: skip
    failures = {"distributed.scheduler.allowed-failures": 0}
    with dask.config.set(failures), open_client(profile) as remote:
        outcome = run_job(load_recipe_text(_slow_command(60)), xrf_scan, {},
                          lims=lims, client=remote, cluster="sge")  # fmt: skip
    (step,) = lims.job(outcome.job_id).steps
    assert step.status is Status.FAILED
    assert "workers lost: batch job" in step.message and "TIMEOUT" in step.message, step.message
    assert "h_rt" in step.message
