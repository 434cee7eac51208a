"""XRD-CT reconstruction: FBP backends on the same sinograms, and the step on 1 vs 2 workers.

Sinograms: the XRD-CT simulator's phantom (analytic line integrals of its ellipses, the
rotation axis off the middle), one slice per "q bin" with the three phases weighted
differently; truth = its area-fraction maps, so no backend inverts the projector that made the
data. Each backend reconstructs the same slices on one thread (numba, BLAS and FFT limited) in
the step's centre convention; the note gives its RMSE against the truth. ratio = backend's
ms/slice / the fastest's (lower is better). The default backend's row says how far it is from
the fastest.

Scaling: the ``tomo_reconstruct`` step's parts, run the way the engine runs them
(:func:`hpcproc.dispatch.worker.task_part` on a LocalCluster of single-threaded workers) on
sinograms in an HDF5 file like a job's processed file, warm (each worker has imported the
backend and compiled its kernels), 2 workers against 1.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
from distributed import Client, wait
from threadpoolctl import threadpool_limits

from benchmarks.common import Result, local_client
from hpcproc.dispatch.worker import StepTask, task_part, task_plan
from hpcproc.nexus.xrdct_sim import XrdCtConfig, phase_maps, projections
from hpcproc.scaninfo import ScanInfo
from hpcproc.steps.base import StepContext
from hpcproc.steps.tomo_reconstruct import (
    TomoReconstruct,
    TomoReconstructParams,
    available_backends,
    reconstruct,
)

ALL = {"algotom", "skimage", "astra"}
WEIGHTS = (1.0, 0.6, 0.3)  # phase densities of the benchmark slice (matrix, inclusions)


def _phantom(n_x: int, n_theta: int) -> tuple[XrdCtConfig, np.ndarray, np.ndarray]:
    """(config, sinogram (n_theta, n_x), truth image (size, size)) of the weighted phantom."""
    cfg = XrdCtConfig(n_theta=n_theta, n_x=n_x, centre_offset_px=n_x / 40.0 + 0.3)
    w = np.asarray(WEIGHTS)[:, None, None]
    sino = (projections(cfg) * w).sum(axis=0)
    truth = (phase_maps(cfg) * w).sum(axis=0)
    return cfg, sino.astype(np.float32), truth


def _ms_per_slice(found: list[str], sinos: np.ndarray, cfg: XrdCtConfig, repeats: int) -> dict:
    """Best ms/slice of each backend; the backends take turns, so a busy machine slows all."""
    for b in found:  # import and compile first
        reconstruct(sinos[:1], cfg.angles_deg, cfg.centre_px, backend=b)
    best = dict.fromkeys(found, np.inf)
    for _ in range(repeats):
        for b in found:
            t0 = time.perf_counter()
            reconstruct(sinos, cfg.angles_deg, cfg.centre_px, backend=b, threads=1)
            best[b] = min(best[b], time.perf_counter() - t0)
    return {b: 1000.0 * t / len(sinos) for b, t in best.items()}


def backends(n_x: int = 256, n_theta: int = 181, slices: int = 8, repeats: int = 5) -> list:
    cfg, sino, truth = _phantom(n_x, n_theta)
    scales = np.linspace(0.5, 1.5, slices, dtype=np.float32)  # slices differ, as q bins do
    sinos = sino[None] * scales[:, None, None]
    found = available_backends()
    rmse = {}
    with threadpool_limits(1):
        ms = _ms_per_slice(found, sinos, cfg, repeats)
        for b in found:
            rec = reconstruct(sino, cfg.angles_deg, cfg.centre_px, backend=b, threads=1)
            rmse[b] = float(np.sqrt(np.mean((rec - truth) ** 2)))
    fastest = min(ms, key=ms.get)
    shape = f"{n_x} wide, {n_theta} angles, centre {cfg.centre_px:g}, ramp filter, 1 thread"
    rows = [
        Result(
            f"tomo.{b}_ms_per_slice",
            ms[b],
            "ms/slice",
            f"fastest backend ({fastest})",
            ms[fastest],
            higher_is_better=False,
            note=f"RMSE {rmse[b]:.4f} vs truth (densities 0-1); {shape}",
        )
        for b in found
    ]
    default = TomoReconstructParams().backend
    rows.append(
        Result(
            "tomo.default_vs_fastest",
            ms[default],
            "ms/slice",
            f"fastest backend ({fastest})",
            ms[fastest],
            higher_is_better=False,
            note=f"default backend {default}: RMSE {rmse[default]:.4f}; {shape}; "
            f"not installed: {', '.join(sorted(ALL - set(found))) or 'none'}",
        )
    )
    return rows


def _scan(path: Path, n_theta: int, n_x: int) -> ScanInfo:
    return ScanInfo(
        path=path,
        scan_id="bench-000001",
        beamline="i15-1",
        visit="cm99999-1",
        title="tomo benchmark",
        scan_command="scan stage_theta stage_x",
        start_time=datetime.now().replace(microsecond=0),
        end_time=None,
        shape=(n_theta, n_x),
        axes=("stage_theta", "stage_x"),
        axis_values={"stage_theta": (0.0,) * n_theta, "stage_x": (0.0,) * n_x},
        axis_units={"stage_theta": "deg", "stage_x": "mm"},
        finished=True,
    )


def _write_inputs(path: Path, cfg: XrdCtConfig, sinos: np.ndarray) -> None:
    """What the sinogram and find_centre steps leave in a processed file."""
    with h5py.File(path, "w") as f:
        g = f.create_group("entry/sinogram/sinogram")
        g["I"] = sinos
        g["q"] = np.arange(len(sinos), dtype=float)
        g["theta"] = cfg.angles_deg
        g["x"] = cfg.x_mm
        g.attrs["axes"] = ["q", "theta", "x"]
        f["entry/find_centre/results/centre_of_rotation"] = cfg.centre_px


def _parts_rate(client: Client, task: StepTask, ctx: StepContext, repeats: int) -> float:
    """Slices/s of all the step's parts run at once on the cluster: best of ``repeats``, after a
    warm-up that imports and compiles on every worker."""
    plan = client.submit(task_plan, task, ctx, pure=False).result()
    n = plan.outputs[0].shape[0]
    workers = list(client.scheduler_info()["workers"])
    wait(
        [
            client.submit(task_part, task, ctx, plan.parts[0], workers=[w], pure=False)
            for w in workers
        ]
    )
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        futures = [client.submit(task_part, task, ctx, p, pure=False) for p in plan.parts]
        client.gather(futures)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def scaling(n_x: int = 256, n_theta: int = 181, slices: int = 128, chunk: int = 8) -> Result:
    cfg, sino, _ = _phantom(n_x, n_theta)
    sinos = sino[None] * np.linspace(0.5, 1.5, slices, dtype=np.float32)[:, None, None]
    params = TomoReconstructParams(chunk=chunk)
    rates = {}
    load = os.getloadavg()[0]  # other work on the machine takes cores from the workers
    with tempfile.TemporaryDirectory() as tmp:
        processed = Path(tmp) / "processed.nxs"
        _write_inputs(processed, cfg, sinos)
        scan = _scan(Path(tmp) / "scan.nxs", n_theta, n_x)
        task = StepTask(TomoReconstruct.name, params.model_dump_json(), scan)
        ctx = StepContext(
            step_id="reconstruct",
            scan=scan,
            processed=processed,
            workdir=Path(tmp) / "work",
            needs={"sinogram": "/entry/sinogram", "find_centre": "/entry/find_centre"},
        )
        for workers in (1, 2):
            with local_client(workers) as client:
                rates[workers] = _parts_rate(client, task, ctx, repeats=3)
    return Result(
        "tomo.reconstruct_2workers_vs_1",
        rates[2],
        "slices/s",
        "same step on 1 worker",
        rates[1],
        note=f"{slices} slices {n_x} wide, {n_theta} angles, {params.backend}, "
        f"{-(-slices // chunk)} parts of {chunk}; workers single-threaded; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} before, {os.getloadavg()[0]:.1f} after",
    )


def run(
    n_x: int = 256, n_theta: int = 181, slices: int = 8, scaling_slices: int = 128
) -> list[Result]:
    return [*backends(n_x, n_theta, slices), scaling(n_x, n_theta, scaling_slices)]
