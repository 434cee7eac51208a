"""Runs a job plan on a Dask cluster: frame steps are mapped over batches of frame indices.

Steps run in waves: every step whose `needs` have ended starts together, live steps before
downstream ones. A failed step keeps what it wrote; the steps that need it are skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from distributed import Client, Future, as_completed

from hpcproc.dispatch.plan import JobPlan, PlannedStep
from hpcproc.dispatch.worker import StepTask, process_batch, step_outputs
from hpcproc.nexus.processed import ProcessedFile
from hpcproc.status import Status
from hpcproc.steps.base import FrameStep, Output

BATCH_BYTES = 16 * 2**20  # raw bytes read per task: large enough to amortise ~2 ms per task
MAX_BATCH = 256


class RunObserver(Protocol):
    """Told about every change of a step; the LIMS and the CLI's progress bar listen."""

    def step_status(self, step_id: str, status: Status, message: str = "") -> None: ...

    def step_progress(self, step_id: str, done: int, total: int) -> None: ...


@dataclass
class _Running:
    step: PlannedStep
    total: int
    done: int = 0
    futures: list[Future] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pending: int = 0  # tasks not yet returned


def batch_size(frame_bytes: int, n_frames: int, n_workers: int, row: int) -> int:
    """Frames per task: ~BATCH_BYTES of raw data, but at least two tasks per worker; aligned
    to the scan's rows of ``row`` points (whole rows, or an even share of one), so each task's
    results are written to the processed file in one slice."""
    size = max(1, min(MAX_BATCH, BATCH_BYTES // max(1, frame_bytes)))
    size = max(1, min(size, math.ceil(n_frames / max(1, 2 * n_workers))))
    if size >= row:
        return size - size % row
    return max(d for d in range(1, size + 1) if row % d == 0)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _open_step(
    out: ProcessedFile,
    s: PlannedStep,
    provenance: Mapping[str, Mapping[str, Any]],
    outputs: list[Output],
) -> None:
    """The step's NXprocess, written even for a step that fails or is skipped (provenance)."""
    out.add_step(
        s.id,
        sequence_index=s.sequence_index,
        uses=s.spec.uses,
        parameters=s.params.model_dump(mode="json"),
        provenance=provenance.get(s.id, {}),
        outputs=outputs,
    )


class Dispatcher:
    def __init__(self, client: Client, observer: RunObserver) -> None:
        self.client = client
        self.observer = observer

    def run(
        self, plan: JobPlan, out: ProcessedFile, provenance: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Status]:
        status = {s.id: Status.QUEUED for s in plan.steps}
        remaining = list(plan.steps)
        while remaining:
            live_left = any(s.spec.phase == "live" for s in remaining)
            wave = [
                s
                for s in remaining
                if all(status[n].final for n in s.spec.needs)
                and (s.spec.phase == "live" or not live_left)
            ]
            for s in wave:
                remaining.remove(s)
            runnable = []
            for s in wave:
                failed = [n for n in s.spec.needs if status[n] != Status.SUCCESS]
                if failed:
                    status[s.id] = Status.SKIPPED
                    why = ", ".join(f"'{n}' {status[n]}" for n in failed)
                    self.observer.step_status(s.id, Status.SKIPPED, f"skipped: needs {why}")
                    _open_step(out, s, provenance, [])
                    out.finish_step(s.id, "skipped", f"needs {why}")
                else:
                    runnable.append(s)
            status.update(self._run_wave(plan, runnable, out, provenance))
        return status

    def _run_wave(
        self,
        plan: JobPlan,
        steps: list[PlannedStep],
        out: ProcessedFile,
        provenance: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, Status]:
        result: dict[str, Status] = {}
        running: dict[str, _Running] = {}
        owner: dict[str, str] = {}  # future key -> step id
        n_workers = max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))
        for s in steps:
            if not issubclass(s.cls, FrameStep):
                result[s.id] = Status.FAILED
                self.observer.step_status(
                    s.id, Status.FAILED, f"step type {s.spec.uses} cannot run in this version"
                )
                continue
            self.observer.step_status(s.id, Status.RUNNING)
            task = StepTask(s.spec.uses, json.dumps(s.params.model_dump(mode="json")), plan.scan)
            try:
                specs = self.client.submit(step_outputs, task, pure=False).result()
            except Exception as exc:  # the step could not even be built: bad geometry etc.
                result[s.id] = Status.FAILED
                _open_step(out, s, provenance, [])
                out.finish_step(s.id, "failed", _reason(exc))
                self.observer.step_status(s.id, Status.FAILED, _reason(exc))
                continue
            _open_step(out, s, provenance, specs)
            info = plan.scan.datasets[str(getattr(s.params, s.cls.source))]
            n = min(info.shape[0], plan.scan.n_points)
            frame_bytes = int(np.prod(info.shape[1:])) * np.dtype(info.dtype).itemsize
            size = batch_size(frame_bytes, n, n_workers, plan.scan.shape[-1])
            run = running[s.id] = _Running(s, total=n)
            for start in range(0, n, size):
                fut = self.client.submit(
                    process_batch,
                    task,
                    list(range(start, min(n, start + size))),
                    retries=s.spec.resources.retries,
                    pure=False,
                )
                run.futures.append(fut)
                owner[fut.key] = s.id
            run.pending = len(run.futures)
            if not run.pending:
                run.errors.append(f"no frames to process in {info.path}")
                result[s.id] = self._finish(run, out)
                continue
            self.observer.step_progress(s.id, 0, n)
        all_futures = [f for r in running.values() for f in r.futures]
        for fut, value in as_completed(all_futures, with_results=True, raise_errors=False):
            run = running[owner[fut.key]]
            if isinstance(value, BaseException) or fut.status == "error":
                # One bad batch (a corrupt frame) fails the step, but the others still run
                # and are kept: the scientist gets every point that could be processed.
                exc = value if isinstance(value, BaseException) else fut.exception()
                run.errors.append(_reason(exc))
            else:
                indices, values = value
                out.write(run.step.id, indices, values)
                run.done += len(indices)
                self.observer.step_progress(run.step.id, run.done, run.total)
            run.pending -= 1
            if run.pending == 0:
                result[run.step.id] = self._finish(run, out)
        return result

    def _finish(self, run: _Running, out: ProcessedFile) -> Status:
        sid = run.step.id
        if run.errors:
            more = (
                f" (and {len(run.errors) - 1} more failed batches)" if len(run.errors) > 1 else ""
            )
            # Counts first: the LIMS's processingMessage column keeps only 255 characters.
            message = f"{run.done} of {run.total} points processed; {run.errors[0]}{more}"
            out.finish_step(sid, "failed", message)
            self.observer.step_status(sid, Status.FAILED, message)
            return Status.FAILED
        out.finish_step(sid, "success")
        self.observer.step_status(sid, Status.SUCCESS)
        return Status.SUCCESS
