"""The tomography benchmark runs at a reduced size and reports well-formed rows.

No timing assertions (the figures depend on the machine); the accuracy in the notes is checked.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path

from hpcproc.steps.tomo_reconstruct import TomoReconstructParams, available_backends

REPO = Path(__file__).resolve().parents[1]


def test_tomo_benchmark_small(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    tomo = importlib.import_module("benchmarks.tomo")
    results = tomo.run(n_x=64, n_theta=45, slices=2, scaling_slices=16)
    backends = available_backends()
    assert [r.name for r in results] == [
        *(f"tomo.{b}_ms_per_slice" for b in backends),
        "tomo.default_vs_fastest",
        "tomo.reconstruct_2workers_vs_1",
    ]
    for r in results:
        assert r.value > 0 and math.isfinite(r.value), r
        assert r.baseline_value > 0 and math.isfinite(r.baseline_value), r
        json.dumps(r.as_dict())
    per_backend = results[: len(backends)]
    assert min(r.ratio for r in per_backend) == 1.0  # the fastest is its own baseline
    assert all(r.unit == "ms/slice" and not r.higher_is_better for r in per_backend)
    for r in per_backend:  # every backend reconstructs the phantom, in the same convention
        rmse = float(re.search(r"RMSE (\d+\.\d+)", r.note).group(1))
        assert rmse < 0.06, r
    default = results[-2]
    assert TomoReconstructParams().backend in default.note
    scaling = results[-1]
    assert scaling.unit == "slices/s" and scaling.higher_is_better
