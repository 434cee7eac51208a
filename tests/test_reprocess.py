"""Reprocessing and parameter sweeps: new jobs on the same data collection, linked to the original,
run for real (LocalCluster, SQLite LIMS, simulated scan)."""

from __future__ import annotations

import json
import shutil

import h5py
import pytest
from conftest import one_line_error

from hpcproc.errors import InputError, LimsError
from hpcproc.job_keys import REPROCESS_OF
from hpcproc.jobs import run_job
from hpcproc.recipes import find_recipe, load_recipe_text
from hpcproc.reprocess import (
    MAX_POINTS,
    parse_sweep,
    plan_reprocessing,
    reprocess,
    reprocess_of,
    reprocess_sweep,
    sweep_options,
    sweep_points,
)
from hpcproc.status import Status


@pytest.fixture
def scan(sim_scan, tmp_path):
    """The simulated scan copied (with its PONI) so processed files land in this test's tmp."""
    d = tmp_path / "scan"
    d.mkdir()
    shutil.copy(sim_scan.poni, d / sim_scan.poni.name)
    return shutil.copy(sim_scan.path, d / sim_scan.path.name)


def _job_count(lims) -> int:
    return len(lims.jobs(limit=1000))


def test_reprocess_xrd_with_new_npt(scan, client, lims):
    first = run_job(find_recipe("xrd-map"), scan, {"npt": "1000"}, lims=lims, client=client)
    assert first.status == Status.SUCCESS
    again = reprocess(first.job_id, {"npt": "1500"}, lims=lims, client=client)
    assert again.status == Status.SUCCESS and again.job_id != first.job_id
    old, new = lims.job(first.job_id), lims.job(again.job_id)
    assert new.dc_id == old.dc_id and new.scan_file == old.scan_file
    assert new.recipe == "xrd-map"
    assert new.parameters["npt"] == 1500
    assert {k: v for k, v in new.parameters.items() if k not in ("npt", REPROCESS_OF)} == {
        k: v for k, v in old.parameters.items() if k != "npt"
    }
    assert reprocess_of(new) == first.job_id and reprocess_of(old) is None
    assert new.parameters[REPROCESS_OF] == first.job_id
    assert f"reprocess of job {first.job_id}" in new.comments
    assert "npt=1500" in new.display_name
    assert new.status == Status.SUCCESS
    assert [a.path for a in new.steps[0].attachments] == [again.processed]
    with h5py.File(again.processed, "r") as f:
        assert f["entry/integrate/integrated/I"].shape == (6, 8, 1500)
        note = json.loads(f["entry/integrate/provenance/data"][()])
        assert note["lims"]["reprocess_of"] == first.job_id
        assert note["recipe_parameters"]["npt"] == 1500
    with h5py.File(first.processed, "r") as f:  # the original is untouched
        assert f["entry/integrate/integrated/I"].shape == (6, 8, 1000)

    # A reprocessing of a reprocessing links to its direct parent; the reserved key is not
    # taken for a recipe parameter.
    (plan,) = plan_reprocessing(again.job_id, {"method": "histogram"}, lims=lims)
    assert plan.parent == again.job_id
    assert REPROCESS_OF not in plan.plan.parameters
    assert plan.plan.parameters["npt"] == 1500 and plan.changes == {"method": "histogram"}


def test_sweep_window_width_makes_three_linked_jobs(scan, client, lims):
    first = run_job(find_recipe("xrf-map"), scan, {}, lims=lims, client=client)
    outcomes = reprocess_sweep(
        first.job_id,
        {"window_width": "10:30:10"},
        {"elements": "Fe-Ka,Zn-Ka"},
        lims=lims,
        client=client,
    )
    assert len(outcomes) == 3 and all(o.status == Status.SUCCESS for o in outcomes)
    records = [lims.job(o.job_id) for o in outcomes]
    assert [r.parameters["window_width"] for r in records] == [10, 20, 30]
    for r in records:
        assert reprocess_of(r) == first.job_id
        assert r.dc_id == lims.job(first.job_id).dc_id
        assert r.parameters["elements"] == ["Fe-Ka", "Zn-Ka"]
    with h5py.File(outcomes[0].processed, "r") as f:
        maps = set(f["entry/windows/maps"])
        assert {"Fe-Ka", "Zn-Ka"} <= maps and "Co-Ka" not in maps
    assert len({o.processed for o in outcomes}) == 3


def test_two_by_two_sweep_makes_four_jobs(scan, client, lims):
    first = run_job(find_recipe("xrf-map"), scan, {"window_width": "40"}, lims=lims, client=client)
    outcomes = reprocess_sweep(
        first.job_id,
        {"window_width": "20,30", "elements": "Fe-Ka;Cu-Ka,Zn-Ka"},
        lims=lims,
        client=client,
    )
    assert len(outcomes) == 4 and all(o.status == Status.SUCCESS for o in outcomes)
    points = [
        (r.parameters["window_width"], r.parameters["elements"], reprocess_of(r))
        for r in (lims.job(o.job_id) for o in outcomes)
    ]
    assert points == [
        (20, ["Fe-Ka"], first.job_id),
        (20, ["Cu-Ka", "Zn-Ka"], first.job_id),
        (30, ["Fe-Ka"], first.job_id),
        (30, ["Cu-Ka", "Zn-Ka"], first.job_id),
    ]
    assert _job_count(lims) == 5


def test_bad_input_records_nothing(scan, client, lims):
    first = run_job(find_recipe("xrd-map"), scan, {"npt": "1000"}, lims=lims, client=client)
    bad = [
        ({"npt": "50"}, None, "npt"),  # below the minimum
        ({"npt": "lots"}, None, "npt"),
        ({"nbins": "5"}, None, "nbins"),
        ({REPROCESS_OF: "3"}, None, REPROCESS_OF),
        (None, {"npt": "1000,50"}, "sweep point 2 of 2"),  # one bad point: no job at all
        (None, {"npt": "100:20000:1"}, str(MAX_POINTS)),
        (None, {"npt": "100:10000:10", "unit": "q_nm^-1,2th_deg,q_A^-1"}, "991 x 3 = 2973"),
        ({"npt": "1000"}, {"npt": "1000,2000"}, "both set and swept"),
    ]
    for changes, sweeps, phrase in bad:
        with pytest.raises(InputError) as info:
            if sweeps is None:
                reprocess(first.job_id, changes, lims=lims, client=client)
            else:
                reprocess_sweep(first.job_id, sweeps, changes, lims=lims, client=client)
        text = str(info.value)
        assert phrase in text and "\n" not in text, text
    assert _job_count(lims) == 1
    with pytest.raises(LimsError, match="99"):
        reprocess(99, {"npt": "1500"}, lims=lims, client=client)


def test_sweep_parsing():
    xrd, xrf = find_recipe("xrd-map"), find_recipe("xrf-map")
    assert parse_sweep("npt", "1000:2000:500", xrd) == [1000, 1500, 2000]
    assert parse_sweep("npt", "1000:1003", xrd) == [1000, 1001, 1002, 1003]
    assert parse_sweep("npt", "2000:1000:-500", xrd) == [2000, 1500, 1000]
    assert parse_sweep("npt", "1000:1999:500", xrd) == [1000, 1500]  # stop not on a step
    assert parse_sweep("npt", "1000,2000", xrd) == ["1000", "2000"]  # checked when planned
    assert parse_sweep("npt", [1000, 2000], xrd) == [1000, 2000]
    assert parse_sweep("elements", "Fe-Ka,Zn-Ka", xrf) == ["Fe-Ka", "Zn-Ka"]
    assert parse_sweep("elements", "Fe-Ka Co-Ka;Zn-Ka", xrf) == ["Fe-Ka Co-Ka", "Zn-Ka"]
    tenths = load_recipe_text(
        "name: t\nparameters:\n  centre: {type: float, default: 220.0}\n"
        "steps:\n  - {id: w, uses: xrf_windows, with: {elements: Fe-Ka}}\n"
    )
    centres = parse_sweep("centre", "210:230:0.5", tenths)
    assert len(centres) == 41 and centres[0] == 210.0 and centres[-1] == 230.0
    assert all(isinstance(c, float) for c in centres)
    assert parse_sweep("centre", "0:0.3:0.1", tenths) == [0.0, 0.1, 0.2, 0.3]  # exact steps
    for name, spec, recipe, phrase in [
        ("npt", "1000:2000:0.5", xrd, "ints"),
        ("npt", "1000:2000:0", xrd, "step is 0"),
        ("npt", "2000:1000:10", xrd, "never goes"),
        ("npt", "1000:x:10", xrd, "not a number"),
        ("npt", "1:2:3:4", xrd, "start:stop:step"),
        ("centre", "210:230", tenths, "start:stop:step"),
        ("centre", "0:1:1e-6", tenths, "at most 1000"),
        ("npt", ",,", xrd, "no values"),
        ("nope", "1,2", xrd, "no such parameter"),
    ]:
        with pytest.raises(InputError, match=phrase):
            parse_sweep(name, spec, recipe)
    assert sweep_points({}) == [{}]
    assert sweep_points({"a": [1, 2], "b": ["x", "y", "z"]})[:2] == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
    ]
    with pytest.raises(InputError, match="40 x 40 = 1600"):
        sweep_points({"a": range(40), "b": range(40)})
    assert sweep_options(["npt=1000,2000", " centre = 1:2:1 "]) == {
        "npt": "1000,2000",
        "centre": "1:2:1",
    }
    for bad in (["npt"], ["=1,2"], ["npt="], ["npt=1", "npt=2"]):
        with pytest.raises(InputError):
            sweep_options(bad)


def test_changed_recipe_is_noted(scan, client, lims):
    first = run_job(find_recipe("xrf-map"), scan, {}, lims=lims, client=client)
    original = find_recipe("xrf-map")
    edited = load_recipe_text(original.text + "\n# edited\n")
    (plan,) = plan_reprocessing(first.job_id, {"window_width": "5"}, lims=lims, recipe=edited)
    assert any("has changed since job" in w for w in plan.warnings)
    (same,) = plan_reprocessing(first.job_id, {}, lims=lims)
    assert same.warnings == () and same.changes == {}
    other = find_recipe("xrd-map")
    with pytest.raises(InputError, match="same recipe"):
        plan_reprocessing(first.job_id, {}, lims=lims, recipe=other)
    assert _job_count(lims) == 1


# ---------------------------------------------------------------- the command


def test_cli_reprocess_and_sweep(cli, scan):
    run = cli("run", "xrf-map", scan, "--json")
    assert run.exit_code == 0, run.output
    (job,) = json.loads(run.stdout)
    one = cli("reprocess", job["job"], "--param", "window_width=25", "--json")
    assert one.exit_code == 0, one.output
    (new,) = json.loads(one.stdout)
    assert new["status"] == "success" and new["recipe"] == "xrf-map"
    assert new["job"] != job["job"] and new["scan"] == job["scan"]
    assert "Dask dashboard" in one.stderr
    shown = cli("status", new["job"])
    assert f"reprocess of job {job['job']}" in shown.stdout
    record = json.loads(cli("status", new["job"], "--json").stdout)
    assert record["parameters"]["window_width"] == 25
    assert record["parameters"][REPROCESS_OF] == job["job"]
    assert record["dc_id"] == json.loads(cli("status", job["job"], "--json").stdout)["dc_id"]

    sweep = cli("reprocess", job["job"], "--sweep", "window_width=10:20:10", "-p", "elements=Fe-Ka")
    assert sweep.exit_code == 0, sweep.output
    assert sweep.stdout.count(f"reprocess of job {job['job']}") == 2
    assert "window_width=10" in sweep.stdout and "window_width=20" in sweep.stdout
    jobs = json.loads(cli("status", "--json").stdout)
    assert len(jobs) == 4 and all(j["status"] == "success" for j in jobs)

    for args, phrase in [
        (["--param", "window_width=0"], "window_width"),
        (["--param", "window_width"], "name=value"),
        (["--sweep", "window_width=1:5000:1"], "at most 1000"),
        (["--sweep", "window_width"], "name=start:stop:step"),
        (["--cluster", "nowhere"], "nowhere"),
    ]:
        bad = cli("reprocess", job["job"], *args)
        assert bad.exit_code == 2, bad.output
        assert phrase in one_line_error(bad)
        assert "Dask dashboard" not in bad.stderr
    missing = cli("reprocess", "99", "--param", "window_width=25")
    assert missing.exit_code == 1
    assert "99" in one_line_error(missing)
    assert len(json.loads(cli("status", "--json").stdout)) == 4  # nothing more recorded
