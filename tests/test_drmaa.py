"""The `command` step with ``submit: drmaa``: the program runs as a Grid Engine batch job
(the real single-node SGE of slurm/sge.sh), through run_job on the real LocalCluster."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from hpcproc.cancel import request_cancel
from hpcproc.errors import RecipeError
from hpcproc.jobs import run_job
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan
from hpcproc.recipes import load_recipe_text
from hpcproc.status import Status
from tests.launch_helpers import Background, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def sge():
    """Grid Engine up (started if it is not); the module is skipped only if it cannot start."""
    script = ROOT / "slurm" / "sge.sh"
    if subprocess.run(["bash", str(script), "status"], capture_output=True).returncode == 0:
        return
    try:
        started = subprocess.run(
            ["bash", str(script), "start"], capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired:
        pytest.skip("Grid Engine did not start within 180 s (bash slurm/sge.sh start)")
    if started.returncode != 0:
        pytest.skip(f"Grid Engine cannot start: {started.stderr.strip() or started.stdout}")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    return simulate_scan(
        tmp_path_factory.mktemp("drmaa"), SimulationConfig(map_shape=(2, 3), xrd=False, seed=1)
    )


def _recipe(with_: dict) -> str:
    step = {"id": "tool", "uses": "command", "phase": "downstream", "with": with_}
    step["resources"] = {"env": "current"}
    return json.dumps({"name": "batch", "steps": [step]})


def _run(with_: dict, scan, lims, client):
    """(outcome, the LIMS record of the one step, its workdir, its INFO values)."""
    outcome = run_job(load_recipe_text(_recipe(with_)), scan.path, {}, lims=lims, client=client)
    (step,) = lims.job(outcome.job_id).steps
    workdir = outcome.processed.parent / f"{outcome.processed.stem}-{step.step_id}"
    values = dict(
        m.message.split(" = ", 1) for m in step.messages if re.match(r"^\w+ = ", m.message)
    )
    return outcome, step, workdir, values


def _sge(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20)


WRITE = (
    "import pathlib, socket, sys; "
    "pathlib.Path('out.txt').write_text(sys.argv[1] + ':' + str(sum(map(ord, sys.argv[1]))))"
)


def test_batch_job_gives_the_same_result_as_a_local_run(scan, lims, client):
    with_ = {"program": "python", "args": ["-c", WRITE, "{scan.id}"], "outputs": ["*.txt"]}
    local, lstep, ldir, lvalues = _run(with_, scan, lims, client)
    assert local.status == Status.SUCCESS, lstep.message
    assert "batch_job_id" not in lvalues
    batch, bstep, bdir, bvalues = _run({**with_, "submit": "drmaa"}, scan, lims, client)
    assert batch.status == Status.SUCCESS, bstep.message
    scan_id = scan.path.stem  # i18-000001
    expected = f"{scan_id}:{sum(map(ord, scan_id))}"
    assert (ldir / "out.txt").read_text() == (bdir / "out.txt").read_text() == expected
    assert bvalues["exit_code"] == "0"
    assert bvalues["batch_job_id"].isdigit()
    assert bvalues["batch_queue"] == "all.q"
    assert bvalues["batch_host"]
    assert float(bvalues["seconds"]) > 0
    results = {a.path for a in bstep.attachments if a.file_type == "Result"}
    logs = {a.path.name for a in bstep.attachments if a.file_type == "Log"}
    assert bdir / "out.txt" in results and logs == {"stdout.log", "stderr.log"}
    # qacct knows the job as having run that program, on that host.
    acct = _sge("qacct", "-j", bvalues["batch_job_id"]).stdout
    assert re.search(rf"^hostname\s+{re.escape(bvalues['batch_host'])}\s*$", acct, re.M), acct
    assert re.search(r"^exit_status\s+0\s*$", acct, re.M), acct


def test_nonzero_exit_fails_with_the_last_stderr_line_and_the_job(scan, lims, client):
    code = "import sys; print('partial'); sys.stderr.write('reading\\nbad frame 7\\n'); sys.exit(3)"
    with_ = {"program": "python", "args": ["-c", code], "submit": "drmaa", "cores": 2}
    outcome, step, workdir, values = _run(with_, scan, lims, client)
    assert outcome.status == Status.FAILED
    job, host = values["batch_job_id"], values["batch_host"]
    assert step.message == f"exit code 3: bad frame 7 (batch job {job} on {host})"
    assert values["exit_code"] == "3"
    assert (workdir / "stdout.log").read_text() == "partial\n"
    assert re.search(r"^slots\s+2\s*$", _sge("qacct", "-j", job).stdout, re.M)  # -pe smp 2


def test_walltime_exceeded_is_named(scan, lims, client):
    with_ = {"program": "sleep", "args": ["60"], "submit": "drmaa", "walltime": "00:00:05"}
    started = time.monotonic()
    outcome, step, _, values = _run(with_, scan, lims, client)
    assert time.monotonic() - started < 30
    assert outcome.status == Status.FAILED
    job = values["batch_job_id"]
    assert step.message == f"batch job {job} killed by SIGKILL: walltime exceeded (h_rt 00:00:05)"
    assert "exit_code" not in values


def test_hpcproc_timeout_terminates_the_batch_job(scan, lims, client):
    with_ = {"program": "sleep", "args": ["60"], "submit": "drmaa", "timeout": 3}
    started = time.monotonic()
    outcome, step, _, values = _run(with_, scan, lims, client)
    assert time.monotonic() - started < 25
    assert outcome.status == Status.FAILED
    job = values["batch_job_id"]
    assert step.message == f"timed out after 3 s; batch job {job} terminated"
    assert job not in _sge("qstat", "-u", "*").stdout.split()  # no longer queued nor running
    acct = _sge("qacct", "-j", job).stdout
    assert re.search(r"^failed\s+100\b", acct, re.M), acct  # ended by qdel/TERMINATE
    assert float(re.search(r"^ru_wallclock\s+([\d.]+)", acct, re.M).group(1)) < 10


def test_cancelling_the_hpcproc_job_terminates_the_batch_job(scan, lims, client):
    with_ = {"program": "sleep", "args": ["300"], "submit": "drmaa", "timeout": 600}
    recipe = load_recipe_text(_recipe(with_))
    job = Background(lambda: run_job(recipe, scan.path, {}, lims=lims, client=client))
    job_id = wait_for("the job", lambda: [j.id for j in lims.jobs(1)], 60)[0]

    def batch_job() -> str | None:
        lines = _sge("qstat", "-u", "*").stdout.splitlines()[2:]  # after the header lines
        mine = [ln.split()[0] for ln in lines if "hpcproc-" in ln and " r " in f" {ln} "]
        return mine[0] if mine else None

    running = wait_for("the batch job to run", batch_job, 120)
    text = request_cancel(lims, job_id, "tester", "wrong queue")
    outcome = job.result(90)
    assert outcome.status == Status.FAILED
    (step,) = lims.job(job_id).steps
    assert step.message == f"{text}; batch job {running} terminated"
    assert running not in _sge("qstat", "-u", "*").stdout.split()  # no longer queued nor running
    acct = wait_for("its accounting", lambda: _sge("qacct", "-j", running).stdout, 30)
    assert re.search(r"^failed\s+100\b", acct, re.M), acct  # ended by TERMINATE


def test_unknown_queue_is_a_clear_failure(scan, lims, client):
    with_ = {"program": "true", "submit": "drmaa", "queue": "nosuch.q"}
    outcome, step, _, values = _run(with_, scan, lims, client)
    assert outcome.status == Status.FAILED
    assert step.message == (
        "cannot submit to the batch system: Job was rejected because job requests unknown queue "
        '"nosuch.q"'
    )
    assert "batch_job_id" not in values


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("native", "-l h_vmem=1G; touch /tmp/pwned", "';'"),
        ("native", "-N x $(id)", "'$('"),
        ("walltime", "5 minutes", "not HH:MM:SS"),
        ("queue", "all.q -l h_rt=1", "is not a queue name"),
        ("submit", "slurm", "'local' or 'drmaa'"),
    ],
)
def test_unsafe_or_bad_batch_parameters_are_refused_by_the_recipe(key, value, words):
    with pytest.raises(RecipeError) as err:
        load_recipe_text(_recipe({"program": "true", "submit": "drmaa", key: value}))
    text = str(err.value)
    assert f"for '{key}' of step 'command'" in text, text
    assert words in text, text
