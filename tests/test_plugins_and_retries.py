"""A facility's own step, installed as a package that registers it, runs like a built-in one;
and a step's `retries` re-runs a batch that failed."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from plugin_helpers import plugin_client as installed_plugin

from hpcproc.jobs import run_job
from hpcproc.recipes import load_recipe_text
from hpcproc.status import Status
from hpcproc.steps import registry

PLUGIN = '''
"""A step that fails the first time it sees each batch (a flaky file system, say)."""
import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from hpcproc.steps.base import FrameStep, Output, StepParams


class Params(StepParams):
    mca: str = "/entry/instrument/xspress3/data"
    marks: str = Field(description="directory for 'already failed once' marks")


class FlakySum(FrameStep):
    name: ClassVar[str] = "flaky_sum"
    Params = Params
    source = "mca"

    def output_specs(self):
        return [Output("total", (), group="sums")]

    def process(self, frames):
        mark = Path(self.params.marks) / hashlib.sha1(frames.tobytes()).hexdigest()
        if not mark.exists():
            mark.touch()
            raise OSError("transient read error")
        return {"sums/total": frames.reshape(len(frames), -1).sum(axis=1).astype(np.float32)}
'''

RECIPE = """
name: flaky
steps:
  - id: sum
    uses: flaky_sum
    with: {{marks: "{marks}"}}
    resources: {{retries: {retries}}}
"""


@pytest.fixture(scope="module")
def plugin_cluster(tmp_path_factory):
    """The plugin installed the way pip would, seen by this process and fresh workers."""
    site = tmp_path_factory.mktemp("site")
    with installed_plugin(
        site, "flaky_steps", PLUGIN, "flaky_sum = flaky_steps:FlakySum", workers=1
    ) as client:
        yield client


@pytest.mark.parametrize(("retries", "expected"), [(1, Status.SUCCESS), (0, Status.FAILED)])
def test_retries_rerun_a_failed_batch(plugin_cluster, sim_scan, lims, tmp_path, retries, expected):
    assert "flaky_sum" in registry.available_steps()
    recipe = load_recipe_text(RECIPE.format(marks=tmp_path, retries=retries), "flaky.yaml")
    outcome = run_job(recipe, sim_scan.path, {}, lims=lims, client=plugin_cluster)
    assert outcome.steps["sum"] == expected
    step = lims.job(outcome.job_id).steps[0]
    assert step.status == expected
    if expected == Status.FAILED:
        assert "transient read error" in step.message
        return
    with h5py.File(outcome.processed, "r") as f:
        totals = f["entry/sum/sums/total"][()]
    with h5py.File(sim_scan.path, "r") as raw:
        import hdf5plugin  # noqa: F401

        expected_totals = raw["/entry/instrument/xspress3/data"][()].reshape(48, -1).sum(axis=1)
    np.testing.assert_allclose(totals.ravel(), expected_totals, rtol=1e-6)
