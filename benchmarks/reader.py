"""FrameReader on Excalibur-sized Blosc frames: direct-chunk read vs the HDF5 filter pipeline,
and Blosc decode throughput vs memcpy (the physical limit).

(a) ``reader.direct_vs_filter``: frames/s of ``FrameReader.read(i, out=buf)`` (direct-chunk read
    + blosc2 decode into a reused buffer) against ``dset[i]`` through the HDF5 Blosc filter, the
    file in the page cache, one decode thread each. ``reader.direct_2threads_vs_filter`` is the
    same reader with blosc2's 2 internal threads (blosc2's default on a 2-core machine).
(b) ``reader.decode_vs_memcpy`` / ``reader.decode_2threads_vs_memcpy``: MB/s of decompressed
    output of ``blosc2.decompress`` over the raw chunks already in memory (reused output buffer)
    against ``np.copyto`` between two preallocated arrays of the same total decompressed size.

Every timed repeat runs the candidates and their baseline back to back (interleaved), and the
figures are medians over the repeats, so that a noisy shared machine drifts both alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blosc2
import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filter for the baseline read)
import numpy as np

from benchmarks.common import Result
from hpcproc.nexus.frames import FrameReader
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan

DATASET = "/entry/instrument/excalibur/data"
FRAMES = 32
SHAPE = (2069, 1796)  # Excalibur 3M, uint16
REPEATS = 7
MB = 1e6


def _interleaved_medians(fns: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Median items/s of each ``fn`` (which returns the items it did), run in turn per repeat."""
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def _with_threads(n: int, fn: Callable[[], int]) -> Callable[[], int]:
    """``fn`` run with blosc2 using ``n`` internal threads."""

    def run_with() -> int:
        blosc2.set_nthreads(n)
        return fn()

    return run_with


def run(
    frames: int = FRAMES, shape: tuple[int, int] = SHAPE, repeats: int = REPEATS
) -> list[Result]:
    """The four Result rows; ``frames``/``shape``/``repeats`` shrink it for tests."""
    saved_threads = blosc2.nthreads
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sim = simulate_scan(
                Path(tmp),
                SimulationConfig(map_shape=(1, frames), frame_shape=shape, xrf=False, seed=7),
            )
            return _measure(sim.path, frames, shape, repeats)
    finally:
        blosc2.set_nthreads(saved_threads)


def _measure(path: Path, n: int, shape: tuple[int, int], repeats: int) -> list[Result]:
    frame_nbytes = int(np.prod(shape)) * 2
    with h5py.File(path, "r") as f, FrameReader(path, DATASET) as reader:
        dset = f[DATASET]
        if not reader.direct or dset.shape != (n, *shape) or dset.dtype != np.uint16:
            raise RuntimeError(f"unexpected layout for the benchmark: {reader!r}")
        # Page cache warm: read the whole file once through each path before timing. (The HDF5
        # chunk cache, 1 MiB by default, is smaller than one decoded chunk: it caches nothing.)
        raws = [bytes(dset.id.read_direct_chunk((i, 0, 0))[1]) for i in range(n)]
        last = dset[n - 1]
        buf = np.empty(shape, np.uint16)
        if not np.array_equal(reader.read(n - 1, out=buf), last):
            raise RuntimeError("FrameReader and the HDF5 filter disagree on the last frame")

        def filtered() -> int:
            for i in range(n):
                dset[i]
            return n

        def direct() -> int:
            for i in range(n):
                reader.read(i, out=buf)
            return n

        a = _interleaved_medians(
            {
                "filter": filtered,
                "direct1": _with_threads(1, direct),
                "direct2": _with_threads(2, direct),
            },
            repeats,
        )

    # (b) decode of chunks already in memory vs memcpy of the same decompressed volume
    total = n * frame_nbytes
    cratio = total / sum(len(r) for r in raws)
    src = np.ones(n * int(np.prod(shape)), np.uint16)
    dst = np.empty_like(src)
    dst.fill(0)  # fault the pages in before timing

    def decode() -> int:
        for raw in raws:
            blosc2.decompress(raw, dst=buf)
        return total

    def memcpy() -> int:
        np.copyto(dst, src)
        return total

    b = _interleaved_medians(
        {
            "memcpy": memcpy,
            "decode1": _with_threads(1, decode),
            "decode2": _with_threads(2, decode),
        },
        repeats,
    )
    if not np.array_equal(buf, last):
        raise RuntimeError("blosc2 decoded the last chunk wrongly")

    size = f"{n} frames {shape[0]}x{shape[1]} uint16"
    codec = f"LZ4+bitshuffle (blosc1 framing), compression ratio {cratio:.2f}"
    note_a = (
        f"{size}, {codec}; page cache warm; median of {repeats}; filter path = HDF5 Blosc "
        "filter, new array per frame"
    )
    note_b = (
        f"{size}, {codec}; decode into one reused frame buffer; memcpy = np.copyto of "
        f"{total / MB:.0f} MB; median of {repeats}"
    )
    return [
        Result(
            "reader.direct_vs_filter",
            a["direct1"],
            "frames/s",
            "h5py dset[i] via filter (1 thread)",
            a["filter"],
            note="1 decode thread each; goal ratio >= 1.5; " + note_a,
        ),
        Result(
            "reader.direct_2threads_vs_filter",
            a["direct2"],
            "frames/s",
            "h5py dset[i] via filter (1 thread)",
            a["filter"],
            note="blosc2 with 2 internal threads (its default here); " + note_a,
        ),
        Result(
            "reader.decode_vs_memcpy",
            b["decode1"] / MB,
            "MB/s",
            "np.copyto (memcpy)",
            b["memcpy"] / MB,
            note="1 thread; goal ratio >= 0.35; " + note_b,
        ),
        Result(
            "reader.decode_2threads_vs_memcpy",
            b["decode2"] / MB,
            "MB/s",
            "np.copyto (memcpy)",
            b["memcpy"] / MB,
            note="blosc2 with 2 threads; goal ratio >= 0.35; " + note_b,
        ),
    ]
