"""xrf_windows on a Blosc-compressed Xspress3-like map (8 channels x 4096 bins, uint32)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filter for the baseline read)

from benchmarks.common import Result, best_rate
from benchmarks.harness import job_rate
from hpcproc.formats import read_scan_info
from hpcproc.nexus.frames import FrameReader
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan
from hpcproc.steps.xrf_windows import XrfWindows

MCA = "/entry/instrument/xspress3/data"
ELEMENTS = ["Fe-Ka", "Co-Ka", "Ni-Ka", "Cu-Ka", "Zn-Ka"]
BATCH = 128
MAP = (80, 100)  # large enough that a job's fixed costs (~0.1 s) do not dominate
DETECTOR_HZ = 1000.0  # Xspress3 on I18: 1 kHz x 8 channels x 4096 bins (the seed talk)


def run() -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate_scan(Path(tmp), SimulationConfig(map_shape=MAP, xrd=False, seed=1))
        n = MAP[0] * MAP[1]
        scan = read_scan_info(sim.path)

        def bare_read() -> int:  # h5py through the HDF5 Blosc filter, the whole dataset
            with h5py.File(sim.path, "r") as f:
                f[MCA][()]
            return n

        step = XrfWindows(XrfWindows.Params(elements=ELEMENTS, window_width=40), scan)

        def step_one_core() -> int:  # the step as a worker runs it: direct-chunk read + windows
            with FrameReader(sim.path, MCA) as reader:
                for start in range(0, n, BATCH):
                    step.process(reader.read_batch(range(start, min(n, start + BATCH))))
            return n

        baseline = best_rate(bare_read)
        one_core = best_rate(step_one_core)
        job = job_rate("xrf-map", sim.path, {}, n)
    note = f"{MAP[0]}x{MAP[1]} map; job = `hpcproc run xrf-map` path, 2-worker LocalCluster, warm"
    return [
        Result(
            "xrf_windows.step_1core",
            one_core,
            "points/s",
            "h5py filter read (1 core)",
            baseline,
            note=note,
        ),
        Result(
            "xrf_windows.job_local_cluster",
            job,
            "points/s",
            "h5py filter read (1 core)",
            baseline,
            note=note,
        ),
        Result(
            "xrf_windows.job_vs_detector",
            job,
            "points/s",
            "Xspress3 rate (nominal)",
            DETECTOR_HZ,
            note="ratio >= 1 keeps up with the detector",
        ),
    ]
