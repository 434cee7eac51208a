"""The benchmarks run (at a reduced size) and report well-formed rows; the CLI rejects bad names.

No timing assertions: the figures depend on the machine.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import blosc2
import pytest

REPO = Path(__file__).resolve().parents[1]
KEYS = {"name", "value", "unit", "baseline", "baseline_value", "ratio"}


@pytest.fixture
def bench(monkeypatch):
    """The ``benchmarks`` package (it lives at the repo root, not in the installed package)."""
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("benchmarks")


def test_reader_benchmark_small(bench):
    reader = importlib.import_module("benchmarks.reader")
    threads = blosc2.nthreads
    results = reader.run(frames=4, shape=(256, 256), repeats=2)
    assert blosc2.nthreads == threads  # the benchmark restores blosc2's thread count
    assert [r.name for r in results] == [
        "reader.direct_vs_filter",
        "reader.direct_2threads_vs_filter",
        "reader.decode_vs_memcpy",
        "reader.decode_2threads_vs_memcpy",
    ]
    for r in results:
        assert r.value > 0 and math.isfinite(r.value), r
        assert r.baseline_value > 0 and math.isfinite(r.baseline_value), r
        assert r.ratio > 0 and math.isfinite(r.ratio), r
        d = r.as_dict()
        assert d.keys() >= KEYS
        json.dumps(d)
    assert {r.unit for r in results[:2]} == {"frames/s"}
    assert {r.unit for r in results[2:]} == {"MB/s"}
    assert all("compression ratio" in r.note for r in results)


def test_reader_is_registered(bench):
    assert "reader" in importlib.import_module("benchmarks.__main__").MODULES


@pytest.mark.parametrize("argv", [["--only", "no_such_benchmark", "--json"], ["--only", ""]])
def test_cli_rejects_unknown_benchmark(argv):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""  # nothing ran
    assert "unknown benchmark" in proc.stderr


def test_launch_benchmark_small(bench):
    from launch_helpers import need_rabbitmq

    need_rabbitmq()
    launch = importlib.import_module("benchmarks.launch")
    results = launch.run(runs=1)
    assert [r.name for r in results] == [
        "launch.message_to_recorded",
        "launch.message_to_first_point",
    ]
    recorded, first = results
    assert 0 < recorded.value < 60 and 0 < first.value < 60
    assert all(r.baseline_value == 1.0 and not r.higher_is_better for r in results)
    assert "launch" in importlib.import_module("benchmarks.__main__").MODULES


def test_hpc_benchmark_small(bench):
    hpc = importlib.import_module("benchmarks.hpc")
    results = hpc.run(runs=1, shape=(4, 6))
    names = [r.name for r in results]
    for kind in ("slurm", "sge"):
        assert f"hpc.{kind}_job" in names
    for r in results:
        assert r.baseline_value > 0 and not r.higher_is_better, r
        assert r.value > 0 or r.note.startswith("skipped: "), r
    assert "hpc" in importlib.import_module("benchmarks.__main__").MODULES
