"""Cluster profiles: validated like recipes, and each kind gives a working Dask client."""

from __future__ import annotations

import logging

import pytest
from distributed import LocalCluster

from hpcproc.dispatch.clusters import load_profile, open_client
from hpcproc.errors import InputError, RecipeError


def test_shipped_local_profile():
    profile = load_profile("local")
    assert (profile.kind, profile.threads_per_worker, profile.processes) == ("local", 1, True)


def test_profile_errors_name_file_line_col(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nkind: local\nworkers: two\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:3:10: .*'two'"):
        load_profile(str(bad))
    bad.write_text("name: bad\nkind: slurmish\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:2:7"):
        load_profile(str(bad))
    with pytest.raises(InputError, match="no cluster profile named 'nowhere'"):
        load_profile("nowhere")


def test_local_profile_starts_its_workers(tmp_path):
    profile = tmp_path / "two.yaml"
    profile.write_text("name: two\nworkers: 2\ndashboard_address: ':0'\n")
    with open_client(load_profile(str(profile))) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.submit(sum, [1, 2, 3]).result() == 6


def test_scheduler_profile_joins_a_running_cluster(tmp_path):
    with LocalCluster(
        n_workers=1, processes=False, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster:
        profile = tmp_path / "shared.yaml"
        profile.write_text(
            f"name: shared\nkind: scheduler\nscheduler_address: {cluster.scheduler_address}\n"
        )
        with open_client(load_profile(str(profile))) as client:
            assert client.scheduler.address == cluster.scheduler_address
            assert client.submit(max, [4, 9]).result() == 9
    profile.write_text("name: shared\nkind: scheduler\n")
    with (
        pytest.raises(InputError, match="needs an address"),
        open_client(load_profile(str(profile))),
    ):
        pass
