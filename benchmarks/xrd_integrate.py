"""xrd_integrate on real-sized Excalibur frames (2069 x 1796 uint16) against bare pyFAI."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyFAI
from threadpoolctl import threadpool_limits

from benchmarks.common import Result, best_rate
from benchmarks.harness import job_rate
from hpcproc.formats import read_scan_info
from hpcproc.nexus.frames import FrameReader
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan
from hpcproc.steps.xrd_integrate import XrdIntegrate

FRAMES = "/entry/instrument/excalibur/data"
NPT = 2000
MAP = (4, 6)


def run() -> list[Result]:
    n = MAP[0] * MAP[1]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SimulationConfig(map_shape=MAP, frame_shape=(2069, 1796), xrf=False, seed=2)
        sim = simulate_scan(Path(tmp), cfg)
        scan = read_scan_info(sim.path)
        with FrameReader(sim.path, FRAMES) as reader:
            frames = reader.read_batch(range(n))  # decoded up front: bare pyFAI reads nothing
        ai = pyFAI.load(str(sim.poni))
        method = ("bbox", "csr", "cython")
        ai.integrate1d(frames[0], NPT, unit="q_nm^-1", method=method)  # build the engine

        def bare_pyfai() -> int:
            for frame in frames:
                ai.integrate1d(frame, NPT, unit="q_nm^-1", method=method)
            return n

        params = XrdIntegrate.Params(poni=sim.poni, npt=NPT, method="csr")
        step = XrdIntegrate(params, scan)

        def step_one_core() -> int:  # as a worker runs it: direct-chunk read, decode, integrate
            with FrameReader(sim.path, FRAMES) as reader:
                for i in range(0, n, 4):
                    step.process(reader.read_batch(range(i, min(n, i + 4))))
            return n

        with threadpool_limits(1):
            bare_1 = best_rate(bare_pyfai)
            step_1 = best_rate(step_one_core)
        with threadpool_limits(2):
            bare_2 = best_rate(bare_pyfai)
        job = job_rate("xrd-map", sim.path, {"npt": NPT, "method": "csr"}, n)
    note = f"{n} frames 2069x1796, csr, {NPT} bins; job = 2 single-threaded workers, warm"
    return [
        Result(
            "xrd_integrate.step_1core",
            step_1,
            "frames/s",
            "bare pyFAI integrate1d, 1 thread",
            bare_1,
            note=note,
        ),
        Result(
            "xrd_integrate.job_local_cluster",
            job,
            "frames/s",
            "bare pyFAI integrate1d, 2 threads",
            bare_2,
            note=note,
        ),
    ]
