"""The processed-file writer puts every point where it belongs, whatever order batches come in."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcproc.nexus.processed import ProcessedFile
from hpcproc.scaninfo import ScanInfo
from hpcproc.steps.base import Axis, Output


def _scan(shape: tuple[int, ...], path: Path) -> ScanInfo:
    axes = tuple(f"a{i}" for i in range(len(shape)))
    return ScanInfo(
        path=path,
        scan_id="t-1",
        beamline="i18",
        visit=None,
        title="t",
        scan_command="",
        start_time=None,
        end_time=None,
        shape=shape,
        axes=axes,
        axis_values={
            a: tuple(float(v) for v in range(n)) for a, n in zip(axes, shape, strict=True)
        },
        axis_units={a: "mm" for a in axes},
        finished=True,
    )


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 2, 3), (4, 6)])
@pytest.mark.parametrize("batch", [1, 4, 5, 12])
def test_batches_in_any_order_fill_the_map(tmp_path, shape, batch):
    rng = np.random.default_rng(batch)
    scan = _scan(shape, tmp_path / "scan.nxs")
    n = int(np.prod(shape))
    q = Axis("q", np.linspace(1, 2, 3), "nm^-1")
    outputs = [Output("I", (3,), group="p", axes=(q,)), Output("total", (), group="m")]
    truth_i = rng.random((n, 3), dtype=np.float32)
    truth_t = rng.random(n, dtype=np.float32)
    with ProcessedFile(tmp_path / "out.nxs", scan, title="t") as out:
        out.add_step(
            "s", sequence_index=1, uses="x", parameters={"a": 1}, provenance={}, outputs=outputs
        )
        batches = [np.arange(i, min(n, i + batch)) for i in range(0, n, batch)]
        for k in rng.permutation(len(batches)):
            idx = rng.permutation(batches[k])  # points inside a batch may come unordered too
            out.write("s", idx, {"p/I": truth_i[idx], "m/total": truth_t[idx]})
        out.finish_step("s", "success")
    with h5py.File(tmp_path / "out.nxs", "r") as f:
        np.testing.assert_array_equal(f["entry/s/p/I"][()].reshape(n, 3), truth_i)
        np.testing.assert_array_equal(f["entry/s/m/total"][()].reshape(n), truth_t)
        assert f["entry/s/progress"][()] == n
        assert list(f["entry/s/p"].attrs["axes"]) == [*scan.axes, "q"]
        assert f["entry/s/status"][()].decode() == "success"


def test_unwritten_points_read_as_nan(tmp_path):
    scan = _scan((2, 3), tmp_path / "scan.nxs")
    with ProcessedFile(tmp_path / "out.nxs", scan, title="t") as out:
        out.add_step(
            "s", sequence_index=1, uses="x", parameters={}, provenance={}, outputs=[Output("v", ())]
        )
        out.write("s", np.array([4]), {"data/v": np.array([7.0], np.float32)})
    with h5py.File(tmp_path / "out.nxs", "r") as f:
        v = f["entry/s/data/v"][()]
    assert v[1, 1] == 7.0 and np.isnan(v).sum() == 5
