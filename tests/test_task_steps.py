"""The downstream-step engine: plan, parts in parallel on the workers, finish; outputs, values,
attachments and messages filed; a failing part or finish fails only its step."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from plugin_helpers import plugin_client as installed_plugin

from hpcproc.jobs import run_job
from hpcproc.recipes import load_recipe_text
from hpcproc.status import Status

PLUGIN = '''
"""Task steps of a facility's own package, reading what the live step wrote."""
from typing import ClassVar

import h5py
import numpy as np

from hpcproc.steps.base import (
    ArrayOutput, Axis, StepParams, StepResult, TaskPlan, TaskStep,
)


class Params(StepParams):
    maps: str = "maps"  # the NXdata group of the step it needs
    fail_part: int = -1  # a part starting here raises (to test failures)
    fail_finish: bool = False


class MapStats(TaskStep):
    """Each element's map scaled to its maximum (one part per element), and the totals."""

    name: ClassVar[str] = "map_stats"
    Params = Params

    def _maps(self, ctx):
        [need] = ctx.needs.values()
        with h5py.File(ctx.processed, "r") as f:
            group = f[f"{need}/{self.params.maps}"]
            names = [n for n in group if group[n].ndim == 2 and n not in ("x", "y")]
            return names, np.stack([group[n][()] for n in names])

    def plan(self, ctx):
        names, maps = self._maps(ctx)
        n, ny, nx = maps.shape
        element = Axis("element", np.arange(n, dtype=np.float64))
        return TaskPlan(
            outputs=[
                ArrayOutput("scaled", (n, ny, nx), "stats", axes=(element,), split=True),
                ArrayOutput("totals", (n,), "sums", dtype="float64"),
            ],
            parts=[(i, i + 1) for i in range(n)],
        )

    def run(self, ctx, part):
        if part[0] == self.params.fail_part:
            raise ValueError(f"cannot scale element {part[0]}")
        _names, maps = self._maps(ctx)
        block = maps[part[0]:part[1]]
        return {"stats/scaled": block / block.max(axis=(1, 2), keepdims=True)}

    def finish(self, ctx):
        names, maps = self._maps(ctx)
        totals = maps.sum(axis=(1, 2))
        report = ctx.workdir / "report.txt"
        report.write_text("\\n".join(f"{n} {t:.0f}" for n, t in zip(names, totals)))
        brightest = names[int(np.argmax(totals))]
        return StepResult(
            arrays={"sums/totals": totals},
            values={"brightest": brightest},
            attachments=[(report, "Log")],
            messages=[("WARNING", "this is only a test")],
            failed="finish says no" if self.params.fail_finish else None,
        )
'''

RECIPE = """
name: stats
steps:
  - id: windows
    uses: xrf_windows
    phase: live
    with: {elements: [Fe-Ka, Cu-Ka, Zn-Ka], mca: /entry/instrument/xspress3/data}
  - id: stats
    uses: map_stats
    phase: downstream
    needs: [windows]
  - id: broken
    uses: map_stats
    phase: downstream
    needs: [windows]
    with: {fail_part: 1}
  - id: refused
    uses: map_stats
    phase: downstream
    needs: [windows]
    with: {fail_finish: true}
  - id: after_broken
    uses: map_stats
    phase: downstream
    needs: [broken]
"""


@pytest.fixture(scope="module")
def plugin_client(tmp_path_factory):
    """The plugin installed the way pip would, seen by this process and fresh workers."""
    site = tmp_path_factory.mktemp("site")
    with installed_plugin(
        site, "stats_steps", PLUGIN, "map_stats = stats_steps:MapStats", workers=2
    ) as client:
        yield client


def test_task_steps_run_in_parts_and_file_their_results(plugin_client, sim_scan, truth, lims):
    recipe = load_recipe_text(RECIPE, "stats.yaml")
    outcome = run_job(recipe, sim_scan.path, {}, lims=lims, client=plugin_client)
    assert outcome.steps == {
        "windows": Status.SUCCESS,
        "stats": Status.SUCCESS,
        "broken": Status.FAILED,
        "refused": Status.FAILED,
        "after_broken": Status.SKIPPED,
    }
    with h5py.File(outcome.processed, "r") as f:
        # the plugin stacks the maps in the group's (alphabetical) order
        maps = np.stack([f[f"entry/windows/maps/{e}"][()] for e in ("Cu-Ka", "Fe-Ka", "Zn-Ka")])
        scaled = f["entry/stats/stats/scaled"][()]
        totals = f["entry/stats/sums/totals"][()]
        assert f["entry/stats/results/brightest"][()].decode() in ("Fe-Ka", "Cu-Ka", "Zn-Ka")
        assert f["entry/stats/status"][()].decode().strip("\x00") == "success"
        assert f["entry/broken/status"][()].decode().strip("\x00") == "failed"
        assert f["entry/stats/stats"].attrs["signal"] == "scaled"
    np.testing.assert_allclose(scaled, maps / maps.max(axis=(1, 2), keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(totals, maps.sum(axis=(1, 2)), rtol=1e-6)
    assert np.isclose(scaled.max(axis=(1, 2)), 1).all()  # every part was written

    job = lims.job(outcome.job_id)
    steps = {s.step_id: s for s in job.steps}
    stats = steps["stats"]
    texts = [m.message for m in stats.messages]
    assert any(t.startswith("brightest = ") for t in texts) and "this is only a test" in texts
    [report] = [a for a in stats.attachments if a.file_type == "Log"]
    assert report.path.read_text().count("\n") == 2
    assert steps["broken"].status is Status.FAILED
    assert "part 1:2: ValueError: cannot scale element 1" in steps["broken"].message
    assert steps["refused"].message == "finish says no"
    assert any(a.file_type == "Log" for a in steps["refused"].attachments)  # its files kept
    assert "needs 'broken' failed" in steps["after_broken"].message
    json.dumps([m.message for m in stats.messages])


def test_a_task_step_must_be_downstream(plugin_client, sim_scan, lims):
    from hpcproc.errors import InputError

    text = RECIPE.replace(
        "phase: downstream\n    needs: [windows]\n  - id: broken",
        "phase: live\n    needs: [windows]\n  - id: broken",
        1,
    )
    recipe = load_recipe_text(text, "stats.yaml")
    with pytest.raises(InputError, match="needs phase: downstream"):
        run_job(recipe, sim_scan.path, {}, lims=lims, client=plugin_client)
