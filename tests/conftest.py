"""Shared fixtures: a simulated scan (with ground truth), a real Dask LocalCluster, a LIMS."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from hpcproc.lims import Lims
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan


@pytest.fixture(scope="session")
def sim_scan(tmp_path_factory: pytest.TempPathFactory):
    """A small I18-like scan: 6x8 map, 256x256 XRD frames, 8x4096 XRF spectra."""
    out = tmp_path_factory.mktemp("scan")
    return simulate_scan(out, SimulationConfig(map_shape=(6, 8), frame_shape=(256, 256), seed=3))


@pytest.fixture(scope="session")
def truth(sim_scan) -> dict:
    return json.loads(Path(sim_scan.truth).read_text())


@pytest.fixture(scope="session")
def client():
    """A real LocalCluster: two single-threaded worker processes, as on a 2-core machine."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture
def lims(tmp_path: Path):
    db = Lims(f"sqlite:///{tmp_path / 'lims.sqlite'}")
    yield db
    db.close()
