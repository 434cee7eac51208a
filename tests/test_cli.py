"""The `hpcproc` command as a person uses it: one clear line for mistakes, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line_error

from hpcproc import __version__

TYPO_RECIPE = """\
name: typo
steps:
  - id: integrate
    uses: xrd_integrat
"""


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_validate_reports_file_line_col(cli, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(TYPO_RECIPE)
    result = cli("recipes", "validate", bad)
    assert result.exit_code == 2
    line = one_line_error(result)
    assert f"{bad}:4:11" in line and "xrd_integrat" in line and "xrd_integrate" in line


@pytest.mark.parametrize(
    ("text", "where", "phrase"),
    [
        (TYPO_RECIPE, "4:11", "xrd_integrat"),
        (
            "name: c\nsteps:\n"
            "  - {id: a, uses: xrf_windows, needs: [b], with: {elements: Fe-Ka}}\n"
            "  - {id: b, uses: xrf_windows, needs: [a], with: {elements: Fe-Ka}}\n",
            "3:",
            "cycle",
        ),
        ("name: t\nparameters:\n  npt: {type: int, default: many}\nsteps: []\n", "3:", "many"),
    ],
)
def test_run_with_a_broken_recipe_runs_and_records_nothing(
    cli, sim_scan, tmp_path, text, where, phrase
):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = cli("run", bad, sim_scan.path)
    assert result.exit_code == 2
    line = one_line_error(result)
    assert f"{bad}:{where}" in line and phrase in line
    assert "Dask dashboard" not in result.stderr  # no cluster was started
    assert json.loads(cli("status", "--json").stdout) == []


def test_shipped_recipes_validate_and_export_schema(cli):
    shipped = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    result = cli("recipes", "validate", *shipped)
    assert result.exit_code == 0, result.output
    schema = json.loads(cli("recipes", "schema", "xrd-map").stdout)
    assert schema["properties"]["npt"]["minimum"] == 100
    listing = cli("recipes", "list").stdout
    assert "xrd-map" in listing and "xrf-map" in listing


def test_bad_parameter_is_one_line_and_records_nothing(cli, sim_scan):
    result = cli("run", "xrd-map", sim_scan.path, "--param", "npt=lots")
    assert result.exit_code == 2
    assert "npt" in one_line_error(result)
    result = cli("run", "xrd-map", sim_scan.path, "--param", "npt")
    assert result.exit_code == 2
    assert "name=value" in one_line_error(result)
    assert json.loads(cli("status", "--json").stdout) == []


def test_missing_scan_and_unknown_cluster(cli, sim_scan, tmp_path):
    result = cli("run", "xrd-map", tmp_path / "nope.nxs")
    assert result.exit_code == 2
    assert "nope.nxs" in one_line_error(result)
    result = cli("run", "xrd-map", sim_scan.path, "--cluster", "nowhere")
    assert result.exit_code == 2
    assert "nowhere" in one_line_error(result)
    result = cli("status", "99")
    assert result.exit_code == 1
    assert "99" in one_line_error(result)


def test_demo_from_the_shell(tmp_path):
    """`hpcproc demo` in a separate process, as the README's first command runs it."""
    env = {**os.environ, "HPCPROC_HOME": str(tmp_path / "home")}
    env.pop("HPCPROC_LIMS_URL", None)
    hpcproc = [sys.executable, "-m", "hpcproc.cli"]
    demo = subprocess.run(
        [*hpcproc, "demo", "--map", "4x5", "--frame", "128x128"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stderr
    assert "Dask dashboard: http://" in demo.stderr
    processed = sorted((tmp_path / "home" / "demo" / "processed").glob("*.nxs"))
    assert [p.name for p in processed] == [
        "i18-000001-xrd-map-job1.nxs",
        "i18-000001-xrf-map-job2.nxs",
    ]
    for p in processed:
        assert str(p) in demo.stdout
    status = subprocess.run(
        [*hpcproc, "status", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    jobs = json.loads(status.stdout)
    assert [(j["recipe"], j["status"]) for j in jobs] == [
        ("xrf-map", "success"),
        ("xrd-map", "success"),
    ]

    def listed(*filters: str) -> list[int]:
        found = subprocess.run(
            [*hpcproc, "status", "--json", *filters],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return [j["id"] for j in json.loads(found.stdout)]

    assert listed("--recipe", "xrd-map") == [1]
    assert listed("--visit", "cm12345-1", "--state", "success") == [2, 1]
    assert listed("--visit", "cm99999-1") == []
    assert listed("--search", "i18-000001") == [2, 1]
    assert listed("--state", "failed") == []
    one = subprocess.run(
        [*hpcproc, "status", "1", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    job = json.loads(one.stdout)
    assert job["steps"][0]["step_id"] == "integrate"
    assert job["steps"][0]["attachments"][0]["path"] == str(processed[0])


def test_simulate_live_writes_a_finished_swmr_scan(cli, tmp_path):
    result = cli(
        "simulate",
        tmp_path / "live",
        "--live",
        "--rate",
        "200",
        "--map",
        "2x3",
        "--frame",
        "64x64",
        "--bins",
        "512",
    )
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip().splitlines()[-1])
    from hpcproc.formats import read_scan_info

    info = read_scan_info(path)
    assert info.finished and info.shape == (2, 3)
    assert info.datasets["/entry/instrument/excalibur/data"].shape == (6, 64, 64)
    bad = cli("simulate", tmp_path / "x", "--map", "0x3")
    assert bad.exit_code == 2


def test_run_waits_for_a_scan_file_that_appears(cli, sim_scan, tmp_path):
    import shutil
    import threading

    late = tmp_path / "late" / sim_scan.path.name
    late.parent.mkdir()
    shutil.copy(sim_scan.poni, late.with_suffix(".poni"))
    timer = threading.Timer(1.0, shutil.copy, (sim_scan.path, late))
    timer.start()
    result = cli("run", "xrf-map", late, "--wait", "30", "--json")
    timer.join()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["status"] == "success"
    gone = cli("run", "xrf-map", tmp_path / "never.nxs", "--wait", "0.5")
    assert gone.exit_code == 2 and "never.nxs" in one_line_error(gone)


def test_launcher_needs_a_source(cli) -> None:
    result = cli("launcher")
    assert result.exit_code == 2
    assert "no scan source: give --amqp URL" in one_line_error(result)
    result = cli("launcher", "--stomp", "localhost")
    assert result.exit_code == 2
    assert "--stomp 'localhost' is not HOST:PORT" in one_line_error(result)


def test_approve_and_reject_held_jobs(cli, sim_scan, tmp_path):
    """Staff without the web page: approve runs a held job here, under its id; reject skips it."""
    from hpcproc.jobs import prepare, record_plan
    from hpcproc.lims import Lims, default_lims_url
    from hpcproc.recipes import find_recipe

    with Lims(default_lims_url(tmp_path / "home")) as lims:
        plan = prepare(find_recipe("xrf-map"), sim_scan.path, {})
        held = [record_plan(plan, lims=lims, automatic=True, awaiting_approval=True).job_id
                for _ in range(2)]  # fmt: skip
    result = cli("approve", held[0], "--by", "admin", "--json")
    assert result.exit_code == 0, result.output
    [outcome] = json.loads(result.stdout[result.stdout.index("[") :])
    assert outcome["job"] == held[0] and outcome["status"] == "success"
    again = cli("approve", held[0])
    assert again.exit_code == 1
    assert "not awaiting approval: approved by admin" in one_line_error(again)
    result = cli("reject", held[1], "--reason", "sample moved", "--by", "admin")
    assert result.exit_code == 0 and f"job {held[1]} rejected" in result.stdout
    with Lims(default_lims_url(tmp_path / "home")) as lims:
        done, rejected = lims.job(held[0]), lims.job(held[1])
    assert done.status.value == "success"
    assert rejected.status.value == "skipped"
    assert rejected.parameters["hpcproc.approval"].endswith(": sample moved")
    assert "not run: rejected by admin" in rejected.steps[0].message
