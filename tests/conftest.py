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


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """The `hpcproc` command in this process, with its own HPCPROC_HOME (SQLite LIMS)."""
    from click.testing import CliRunner

    from hpcproc.cli import main

    monkeypatch.setenv("HPCPROC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HPCPROC_LIMS_URL", raising=False)
    runner = CliRunner()

    def invoke(*args: object):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def one_line_error(result) -> str:
    """The single line a user mistake prints on stderr (and no traceback)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]
