"""Running a recipe the way hpcproc does (LocalCluster, LIMS, processed file) for benchmarks."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import local_client
from hpcproc.jobs import run_job
from hpcproc.lims import Lims
from hpcproc.recipes import find_recipe


def job_rate(recipe: str, scan: Path, params: dict, n_points: int, workers: int = 2) -> float:
    """Points/s of a whole job on a fresh LocalCluster, warm: the second of two runs (the first
    builds each worker's step, e.g. pyFAI's engine, which later jobs on that cluster reuse)."""
    with local_client(workers) as client, Lims("sqlite://") as lims:
        rate = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            outcome = run_job(find_recipe(recipe), scan, params, lims=lims, client=client)
            rate = n_points / (time.perf_counter() - t0)
            if outcome.status != "success":
                raise RuntimeError(f"benchmark job failed: {outcome.steps}")
        return rate
