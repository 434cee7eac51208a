"""The `command` and `notebook` downstream steps and named environments (envs/), run as jobs
through run_job on the real LocalCluster. The notebook tests build the shipped `notebook` venv
once per session under a temporary HPCPROC_HOME (about a minute: it pip-installs)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import h5py
import nbformat
import numpy as np
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from hpcproc import envs
from hpcproc.envs import find_env
from hpcproc.errors import RecipeError
from hpcproc.jobs import run_job
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan
from hpcproc.recipes import find_recipe, load_recipe_text
from hpcproc.status import Status


@pytest.fixture(scope="module")
def xrf_scan(tmp_path_factory):
    """A small XRF-only map (6x8 points, 8 channels x 4096 bins) with its ground truth."""
    scan = simulate_scan(
        tmp_path_factory.mktemp("xrf"), SimulationConfig(map_shape=(6, 8), xrd=False, seed=5)
    )
    return scan, json.loads(scan.truth.read_text())


def _run(text: str, scan, lims, client, **overrides):
    """Run a recipe given as YAML text; (outcome, the LIMS record of its one step, workdir)."""
    outcome = run_job(load_recipe_text(text), scan.path, overrides, lims=lims, client=client)
    (step,) = lims.job(outcome.job_id).steps
    return outcome, step, outcome.processed.parent / f"{outcome.processed.stem}-{step.step_id}"


def _command(with_: dict, env: str | None = "current", parameters: dict | None = None) -> str:
    recipe = {
        "name": "wrap",
        "parameters": parameters or {},
        "steps": [{"id": "tool", "uses": "command", "phase": "downstream", "with": with_}],
    }
    if env is not None:
        recipe["steps"][0]["resources"] = {"env": env}
    return json.dumps(recipe)  # JSON is YAML


def _files(step, kind: str) -> dict[str, Path]:
    return {a.path.name: a.path for a in step.attachments if a.file_type == kind}


# ---- command ---------------------------------------------------------------------------------


def test_command_runs_program_and_attaches_outputs(xrf_scan, lims, client):
    scan, _ = xrf_scan
    code = (
        "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2] + ' ' + sys.argv[3])"
        "; print('wrote', sys.argv[1])"
    )
    args = ["-c", code, "{{workdir}}/result.txt", "{scan.id}", "{{processed}}"]
    text = _command({"program": "python", "args": args, "outputs": ["*.txt", "*.none"]})
    outcome, step, workdir = _run(text, scan, lims, client)
    assert outcome.status == Status.SUCCESS, step.message
    result = workdir / "result.txt"
    assert result.read_text() == f"i18-000001 {outcome.processed}"
    assert _files(step, "Result")["result.txt"] == result
    logs = _files(step, "Log")
    assert set(logs) == {"stdout.log", "stderr.log"}
    assert logs["stdout.log"].read_text() == f"wrote {result}\n"
    texts = [m.message for m in step.messages]
    assert "exit_code = 0" in texts
    assert "no file in the workdir matches '*.none'" in texts  # a pattern that found nothing


def test_command_nonzero_exit_fails_with_last_stderr_line(xrf_scan, lims, client):
    scan, _ = xrf_scan
    code = "import sys; print('partial'); sys.stderr.write('reading\\nbad frame 7\\n'); sys.exit(3)"
    outcome, step, _ = _run(
        _command({"program": "python", "args": ["-c", code]}), scan, lims, client
    )
    assert outcome.status == Status.FAILED
    assert step.status == Status.FAILED
    assert step.message == "exit code 3: bad frame 7"
    logs = _files(step, "Log")
    assert logs["stderr.log"].read_text() == "reading\nbad frame 7\n"
    assert logs["stdout.log"].read_text() == "partial\n"
    # ... unless the recipe says that code means success.
    with_ = {"program": "python", "args": ["-c", code], "success_codes": [0, 3]}
    outcome, step, _ = _run(_command(with_), scan, lims, client)
    assert outcome.status == Status.SUCCESS
    assert "exit_code = 3" in [m.message for m in step.messages]


def test_command_timeout_kills_the_program_and_its_children(xrf_scan, lims, client):
    scan, _ = xrf_scan
    # A child in a session of its own (as a Jupyter kernel is) must die with its parent.
    code = (
        "import subprocess, time; p = subprocess.Popen(['sleep', '120'], start_new_session=True)"
        "; open('child.pid', 'w').write(str(p.pid)); print('started', flush=True); time.sleep(120)"
    )
    with_ = {"program": "python", "args": ["-c", code], "timeout": 1.5}
    started = time.monotonic()
    outcome, step, workdir = _run(_command(with_), scan, lims, client)
    assert time.monotonic() - started < 30
    assert outcome.status == Status.FAILED
    assert step.message == "timed out after 1.5 s"
    assert _files(step, "Log")["stdout.log"].read_text() == "started\n"
    child = int((workdir / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


INJECTIONS = [
    "; touch {workdir}/pwned1",
    "$(touch {workdir}/pwned2)",
    "`touch {workdir}/pwned3`",
    "a b  'c' \"d\" *",
    "| touch {workdir}/pwned4 &",
]


@pytest.mark.parametrize("env", ["current", "module"])
def test_command_arguments_are_never_shell_syntax(xrf_scan, lims, client, tmp_path, env):
    """Each argument, from the recipe or from a LIMS parameter, arrives as one literal word;
    also through the login shell of a `module` env (whose `load` lines here set a variable)."""
    scan, _ = xrf_scan
    if env == "module":
        env_file = tmp_path / "fake-module.yaml"
        env_file.write_text("kind: module\nload:\n  - export HPCPROC_TEST_LOADED=yes\n")
        env = str(env_file)
    code = (
        "import json, os, sys; json.dump([os.environ.get('HPCPROC_TEST_LOADED'), sys.argv[1:]],"
        " open('args.json', 'w'))"
    )
    escaped = [a.replace("{", "{{").replace("}", "}}") for a in INJECTIONS]
    args = ["-c", code, *escaped, "{label}"]
    parameters = {"label": {"type": "str", "default": "x"}}
    text = _command({"program": "python3", "args": args}, env=env, parameters=parameters)
    from_lims = "'; touch /tmp/hpcproc-pwned-by-lims; echo '"
    outcome, step, workdir = _run(text, scan, lims, client, label=from_lims)
    assert outcome.status == Status.SUCCESS, step.message
    loaded, got = json.loads((workdir / "args.json").read_text())
    assert got == [a.replace("{workdir}", str(workdir)) for a in INJECTIONS] + [from_lims]
    assert loaded == ("yes" if env.endswith(".yaml") else None)
    assert not list(workdir.glob("pwned*"))
    assert not Path("/tmp/hpcproc-pwned-by-lims").exists()


def test_command_missing_program_fails_clearly(xrf_scan, lims, client, tmp_path):
    scan, _ = xrf_scan
    outcome, step, _ = _run(_command({"program": "hpcproc-no-such-tool"}), scan, lims, client)
    assert outcome.status == Status.FAILED
    assert step.message == "program 'hpcproc-no-such-tool' not found on the PATH of env 'current'"
    missing = tmp_path / "bin" / "tool"
    outcome, step, _ = _run(_command({"program": str(missing)}, env=None), scan, lims, client)
    assert step.message == f"program '{missing}' not found (no executable file there)"


# ---- environments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("kind: venv\nload: [module load x]\n", "2:1", "'load' is for kind module, not venv"),
        ("kind: venv\nrequirements: numpy\n", "2:15", "invalid value 'numpy' for 'requirements'"),
        ("kind: conda\nenvironment: e.yml\n", "1:7", "a conda env needs one of 'name' or 'prefix'"),
        ("kind: docker\n", "1:7", "invalid value 'docker' for 'kind'"),
        ("kind: current\npython3: x\n", "2:1", "unknown key 'python3' (allowed: kind,"),
        ("kind: module\nload: [a]\n  bad: indent\n", "3:3", "invalid YAML"),
    ],
)
def test_env_file_errors_name_file_line_col(tmp_path, text, where, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        find_env(str(path))
    assert str(err.value).startswith(f"{path}:{where}: "), str(err.value)
    assert message in str(err.value)


def test_env_errors_fail_the_step(xrf_scan, lims, client, tmp_path):
    scan, _ = xrf_scan
    bad = tmp_path / "broken.yaml"
    bad.write_text("kind: venv\nrequirements: [numpy]\nprefix: /opt/x\n")
    outcome, step, _ = _run(_command({"program": "true"}, env=str(bad)), scan, lims, client)
    assert outcome.status == Status.FAILED
    assert f"{bad}:3:1: 'prefix' is for kind conda, not venv" in step.message
    outcome, step, _ = _run(_command({"program": "true"}, env="no-such-env"), scan, lims, client)
    assert "no environment named 'no-such-env' (known: current, notebook" in step.message


def test_env_commands():
    venv = envs.Env("v", envs.EnvSpec(kind="venv", path="/opt/v"), Path("v.yaml"))
    assert venv.command(["python", "-c", "x"]) == ["/opt/v/bin/python", "-c", "x"]
    assert venv.environ({"PATH": "/usr/bin", "PYTHONPATH": "/x"}) == {
        "PATH": "/opt/v/bin:/usr/bin",
        "VIRTUAL_ENV": "/opt/v",
    }
    module = envs.Env("m", envs.EnvSpec(kind="module", load=["module load a/1"]), Path("m.yaml"))
    assert module.command(["prog", "it's; rm -rf /"]) == [
        "bash",
        "-lc",
        "module load a/1; exec prog 'it'\"'\"'s; rm -rf /'",
    ]
    conda = envs.Env("c", envs.EnvSpec(kind="conda", prefix="/opt/c"), Path("c.yaml"))
    if shutil.which("conda") or os.environ.get("CONDA_EXE"):
        assert conda.command(["python"])[-4:] == ["--no-capture-output", "-p", "/opt/c", "python"]
    else:
        with pytest.raises(envs.StepError, match="conda is not installed here"):
            conda.command(["python"])
    current = find_env("current")
    assert current.command(["python", "-V"]) == [sys.executable, "-V"]
    assert current.ensure() == Path(sys.prefix)
    assert find_env("tomopy").spec.kind == "conda"


def test_venv_is_built_once_and_rebuilt_when_its_spec_changes(tmp_path, monkeypatch):
    """The build steps are faked (the notebook tests build a real venv): what is tested is the
    lock, the marker and the rebuild."""
    builds: list[list[str]] = []

    def fake_check(argv: list[str], what: str) -> None:
        builds.append(argv)
        time.sleep(0.3)  # long enough for the other threads to be waiting on the lock
        root = Path(argv[argv.index("venv") + 1])
        root.mkdir()
        (root / "pyvenv.cfg").write_text("home = /usr/bin\n")

    monkeypatch.setattr(envs, "_check", fake_check)
    spec = tmp_path / "plain.yaml"
    spec.write_text(f"kind: venv\npath: {tmp_path / 'venv'}\n")
    env = find_env(str(spec))
    roots: list[Path] = []
    threads = [threading.Thread(target=lambda: roots.append(env.ensure())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert roots == [tmp_path / "venv"] * 3
    assert len(builds) == 1  # one build; the other threads waited on the lock, then found it
    assert env.ensure() == tmp_path / "venv" and len(builds) == 1
    spec.write_text(f"kind: venv\npath: {tmp_path / 'venv'}\nsystem_site_packages: true\n")
    assert find_env(str(spec)).ensure() == tmp_path / "venv"
    assert len(builds) == 2 and "--system-site-packages" in builds[1]
    (tmp_path / "venv" / envs.MARKER).unlink()  # a build that died half-way is done again
    assert find_env(str(spec)).ensure() == tmp_path / "venv" and len(builds) == 3
    (tmp_path / "not-a-venv").mkdir()
    (tmp_path / "not-a-venv" / "data.txt").write_text("keep me")
    spec.write_text(f"kind: venv\npath: {tmp_path / 'not-a-venv'}\n")
    with pytest.raises(envs.StepError, match="exists and is not a venv"):
        find_env(str(spec)).ensure()
    assert (tmp_path / "not-a-venv" / "data.txt").exists()


# ---- notebook ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notebook_env(client, tmp_path_factory):
    """The shipped `notebook` venv, built under a temporary HPCPROC_HOME that the workers see."""
    home = str(tmp_path_factory.mktemp("home"))

    def set_home(value: str | None) -> None:
        if value is None:
            os.environ.pop("HPCPROC_HOME", None)
        else:
            os.environ["HPCPROC_HOME"] = value

    before = os.environ.get("HPCPROC_HOME")
    workers_before = client.run(lambda: os.environ.get("HPCPROC_HOME"))
    set_home(home)
    client.run(set_home, home)
    try:
        started = time.monotonic()
        root = find_env("notebook").ensure()
        print(f"\nnotebook venv built in {time.monotonic() - started:.1f} s")
        yield root
    finally:
        set_home(before)
        for address, value in workers_before.items():
            client.run(set_home, value, workers=[address])


def test_xrf_notebook_recipe_maps_match_ground_truth(xrf_scan, lims, client, notebook_env):
    scan, truth = xrf_scan
    recipe = find_recipe("xrf-notebook")
    assert not recipe.applies_to.beamlines and not recipe.applies_to.nexus.requires
    lines = ["Fe-Ka", "Co-Ka", "Ni-Ka", "Cu-Ka", "Zn-Ka"]
    started = time.monotonic()
    outcome = run_job(
        recipe,
        scan.path,
        {"element_list": ",".join(lines), "window_width": 40},
        lims=lims,
        client=client,
    )
    print(f"\nxrf-notebook job took {time.monotonic() - started:.1f} s")
    (step,) = lims.job(outcome.job_id).steps
    assert outcome.status == Status.SUCCESS, step.message
    graphs, results = _files(step, "Graph"), _files(step, "Result")
    html = graphs["xrf_element_maps.html"].read_text()
    assert "data:image/png;base64" in html  # the plotted maps are in the report
    executed = nbformat.read(results["xrf_element_maps.ipynb"], as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert f"python: {notebook_env / 'bin' / 'python'}" in printed
    params = json.loads(_files(step, "Input")["parameters.json"].read_text())
    assert params["element_list"] == lines and params["window_width"] == 40
    assert params["inpath"] == str(scan.path)
    with h5py.File(results["xrf_element_maps.h5"], "r") as f:
        for line in lines:
            found = f[f"entry/maps/{line}"][()]
            pattern = np.asarray(truth["xrf"]["elements"][line.split("-")[0]]["pattern"])
            assert found.shape == pattern.shape == (6, 8)
            assert np.corrcoef(found.ravel(), pattern.ravel())[0, 1] > 0.9, line


def test_notebook_runs_in_its_env_and_a_failing_cell_fails_the_step(
    xrf_scan, lims, client, notebook_env, tmp_path
):
    scan, _ = xrf_scan
    nb = new_notebook(
        cells=[
            new_code_cell(
                'inpath = ""\noutpath = ""\nlimit = 1', metadata={"tags": ["parameters"]}
            ),
            new_code_cell(
                "import json, sys\n"
                "json.dump({'prefix': sys.prefix, 'limit': limit}, open(outpath, 'w'))"
            ),
            new_code_cell("raise ValueError(f'window {limit} is too wide')"),
            new_code_cell("print('never')"),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )
    path = tmp_path / "check.ipynb"
    nbformat.write(nb, path)
    text = json.dumps(
        {
            "name": "check",
            "parameters": {"limit": {"type": "int", "default": 7}},
            "steps": [
                {
                    "id": "nb",
                    "uses": "notebook",
                    "phase": "downstream",
                    "with": {
                        "notebook": str(path),
                        "parameters": {"limit": "{limit}", "outpath": "{{workdir}}/where.json"},
                        "env": "notebook",
                    },
                }
            ],
        }
    )
    outcome, step, workdir = _run(text, scan, lims, client, limit=42)
    assert outcome.status == Status.FAILED
    assert step.message.startswith("cell [") and step.message.endswith(
        "]: ValueError: window 42 is too wide"
    ), step.message
    where = json.loads((workdir / "where.json").read_text())
    assert where == {"prefix": str(notebook_env), "limit": 42}  # ran in the venv, not here
    assert Path(where["prefix"]).resolve() != Path(sys.prefix).resolve()
    assert "check.ipynb" in _files(step, "Result")
    assert "check.html" in _files(step, "Graph")
    last = nbformat.read(workdir / "check.ipynb", as_version=4).cells[-1]
    assert "never" in last.source and not last.outputs  # cells after the error did not run


def test_notebook_not_found(xrf_scan, lims, client):
    scan, _ = xrf_scan
    text = json.dumps(
        {
            "name": "lost",
            "steps": [
                {
                    "id": "nb",
                    "uses": "notebook",
                    "phase": "downstream",
                    "with": {"notebook": "no_such_notebook.ipynb"},
                }
            ],
        }
    )
    outcome, step, _ = _run(text, scan, lims, client)
    assert outcome.status == Status.FAILED
    assert "no notebook 'no_such_notebook.ipynb' in the notebook directories" in step.message


def test_xrf_notebook_on_a_real_i18_map(tmp_path, lims, client, notebook_env):
    """The GDA I18 Xspress3 map of the real-file tests (MCAs (ny, nx, channels, bins), no
    calibration stored): the notebook's windows match the file's own ROI sums."""
    real = Path(__file__).parent / "data" / "real" / "xrf" / "i18_test_data.nxs"
    path = tmp_path / real.name
    shutil.copy(real, path)
    params = {"element_list": "Co-Ka", "window_width": 50, "energy_gain": 10, "energy_offset": 0}
    outcome = run_job(find_recipe("xrf-notebook"), path, params, lims=lims, client=client)
    (step,) = lims.job(outcome.job_id).steps
    assert outcome.status == Status.SUCCESS, step.message
    params = json.loads(_files(step, "Input")["parameters.json"].read_text())
    assert params["mca"] == "/entry1/instrument/xspress3/MCAs"  # {role.mca}
    with h5py.File(_files(step, "Result")["xrf_element_maps.h5"]) as f, h5py.File(real) as raw:
        stored = raw["/entry1/instrument/xspress3/Co_K"][()].sum(axis=-1)
        np.testing.assert_allclose(f["entry/maps/Co-Ka"][()], stored, rtol=0.05)
