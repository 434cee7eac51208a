"""The same recipe on batch-cluster workers (Slurm, Grid Engine) and on a LocalCluster.

The single-node Slurm and Grid Engine of slurm/ (``bash slurm/slurm.sh start``, ``bash
slurm/sge.sh start``) on this machine. Each cluster has 2 single-core workers, as the
LocalCluster has; the recipe is the shipped ``xrf-map`` on a simulated XRF map (40 x 50 points,
8 x 4096 spectra); median of 3 runs on a cluster that is already up.

- ``hpc.<kind>_job``: one job's wall time on the batch workers; baseline the LocalCluster's.
  Work, data and worker count are the same: the ratio is what batch workers cost (a scheduler
  in this process talking TCP to workers the batch system started).
- ``hpc.<kind>_first_worker``: from opening the cluster (the batch jobs submitted) to the
  first worker connected; baseline a LocalCluster's start to its first worker.

A scheduler that is not running gives a row saying so, not a failure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from distributed import Client

from benchmarks.common import Result, local_client
from hpcproc.dispatch.clusters import load_profile, open_client
from hpcproc.jobs import prepare, run_plan
from hpcproc.lims import Lims
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan
from hpcproc.recipes import find_recipe

SCRIPTS = Path(__file__).resolve().parents[1] / "slurm"
RUNS = 3


def _up(kind: str) -> str | None:
    """None if the scheduler answers, else why not."""
    script = SCRIPTS / ("slurm.sh" if kind == "slurm" else "sge.sh")
    done = subprocess.run(["bash", str(script), "status"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"{kind} not running ({done.stdout.strip()}; start it with bash {script} start)"
    if kind == "sge":
        env = subprocess.run(["bash", str(script), "env"], capture_output=True, text=True)
        for line in env.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            os.environ[name.strip()] = value.strip().strip("'\"")
    return None


def _profile(kind: str, tmp: Path) -> Path:
    data = load_profile(kind).model_dump(mode="json", exclude_none=True)
    data["batch"]["adaptive"] = {"minimum": 2, "maximum": 2}
    path = tmp / f"{kind}-bench.yaml"
    path.write_text(json.dumps(data))
    return path


def _jobs(client: Client, scan: Path, lims: Lims, runs: int) -> list[float]:
    plan = prepare(find_recipe("xrf-map"), scan, {})
    client.wait_for_workers(2, timeout=120)
    times = []
    for i in range(runs + 1):  # the first run warms the workers up: not counted
        t0 = time.perf_counter()
        outcome = run_plan(plan, lims=lims, client=client)
        if outcome.status != "success":
            raise RuntimeError(f"hpc benchmark: job {outcome.job_id} {outcome.status}")
        if i:
            times.append(time.perf_counter() - t0)
    return times


def _local(scan: Path, lims: Lims, runs: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    with local_client(2) as client:
        client.wait_for_workers(1)
        start = time.perf_counter() - t0
        return start, _jobs(client, scan, lims, runs)


def run(runs: int = RUNS, shape: tuple[int, int] = (40, 50)) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        scan = simulate_scan(tmp / "data", SimulationConfig(map_shape=shape, xrd=False)).path
        with Lims(f"sqlite:///{tmp / 'lims.sqlite'}") as lims:
            local_start, local_jobs = _local(scan, lims, runs)
            local = statistics.median(local_jobs)
            for kind in ("slurm", "sge"):
                why = _up(kind)
                if why is not None:
                    results.append(Result(f"hpc.{kind}_job", 0.0, "s", "LocalCluster", local,
                                          False, note=f"skipped: {why}"))  # fmt: skip
                    continue
                t0 = time.perf_counter()
                with open_client(load_profile(str(_profile(kind, tmp)))) as client:
                    first = time.perf_counter() - t0
                    times = _jobs(client, scan, lims, runs)
                each = ", ".join(f"{t:.2f}" for t in times)
                results.append(Result(
                    f"hpc.{kind}_job", statistics.median(times), "s", "LocalCluster", local,
                    False, note=f"xrf-map on {shape[0]}x{shape[1]} points, 2 workers each; "
                    f"median of {runs} ({each} s; LocalCluster {local:.2f} s)",
                ))  # fmt: skip
                results.append(Result(
                    f"hpc.{kind}_first_worker", first, "s", "LocalCluster start", local_start,
                    False, note="cluster opened (batch jobs submitted) -> first worker joined",
                ))  # fmt: skip
    return results
