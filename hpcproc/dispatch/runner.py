"""Runs a job plan on a Dask cluster: frame steps are mapped over batches of frame indices.

Steps run in waves: every step whose `needs` have ended starts together, live steps before
downstream ones. A failed step keeps what it wrote; the steps that need it are skipped.

On a scan still being written, a wave follows the file (SWMR): batches are submitted as the
writer completes points, the processed file is itself in SWMR mode so viewers watch it fill,
and the wave ends with the writer's end-of-scan marker, or fails when the writer goes quiet
for longer than the step's ``idle_timeout``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed import Client, Future, as_completed

from hpcproc.dispatch.observe import RunObserver, open_step, reason
from hpcproc.dispatch.plan import JobPlan, PlannedStep
from hpcproc.dispatch.pools import ClientPool
from hpcproc.dispatch.stop import Stop
from hpcproc.dispatch.task_runner import TaskRunner
from hpcproc.dispatch.worker import StepTask, process_batch, step_outputs
from hpcproc.errors import HpcprocError
from hpcproc.nexus.follow import ScanFollower
from hpcproc.nexus.processed import ProcessedFile
from hpcproc.progress import Progress
from hpcproc.scaninfo import frame_count
from hpcproc.status import Status
from hpcproc.steps.base import FrameStep, TaskStep

log = logging.getLogger(__name__)

BATCH_BYTES = 16 * 2**20  # raw bytes read per task: large enough to amortise ~2 ms per task
MAX_BATCH = 256
MAX_WAIT = 0.05  # s a complete point of a live scan may wait for its batch to fill
POLL = 0.005  # s between looks at a live scan (and at finished tasks)


def batch_size(frame_bytes: int, n_frames: int, n_workers: int, row: int) -> int:
    """Frames per task: ~BATCH_BYTES of raw data, but at least two tasks per worker; aligned
    to the scan's rows of ``row`` points (whole rows, or an even share of one), so each task's
    results are written to the processed file in one slice."""
    size = max(1, min(MAX_BATCH, BATCH_BYTES // max(1, frame_bytes)))
    size = max(1, min(size, math.ceil(n_frames / max(1, 2 * n_workers))))
    if size >= row:
        return size - size % row
    return max(d for d in range(1, size + 1) if row % d == 0)


@dataclass
class _Run:
    """The state of one frame step while its wave runs."""

    step: PlannedStep
    task: StepTask
    total: int  # points to process (may shrink when a live scan ends early)
    size: int  # points per batch
    submitted: int = 0
    done: int = 0
    pending: int = 0  # tasks not yet returned
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    waiting_since: float | None = None  # when complete points began waiting for a batch
    lag: float = 0.0
    status: Status | None = None  # set when the step has ended

    def progress(self, written: int) -> Progress:
        elapsed = max(1e-9, time.monotonic() - self.started)
        return Progress(self.done, written, self.total, self.done / elapsed, self.lag)


class Dispatcher:
    """Runs a job plan; once ``stop`` is requested (a cancel) it submits nothing more, cancels
    what waits on the cluster, fails the running steps with the request's reason (what they
    produced is kept) and skips the steps not started."""

    def __init__(
        self,
        client: Client,
        observer: RunObserver,
        pool: ClientPool | None = None,
        stop: Stop | None = None,
    ) -> None:
        self.client = client
        self.observer = observer
        self.pool = pool or ClientPool(client)
        self.stop = stop or Stop()
        self.tasks = TaskRunner(self.pool, observer, self.stop)

    def run(
        self, plan: JobPlan, out: ProcessedFile, provenance: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Status]:
        status = {s.id: Status.QUEUED for s in plan.steps}
        remaining = list(plan.steps)
        while remaining:
            if self.stop.reason is not None:
                for s in remaining:
                    status[s.id] = self._skip(out, s, provenance, self.stop.reason)
                break
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
                    why = ", ".join(f"'{n}' {status[n]}" for n in failed)
                    status[s.id] = self._skip(out, s, provenance, f"needs {why}")
                else:
                    runnable.append(s)
            tasks = [s for s in runnable if issubclass(s.cls, TaskStep)]
            frames = [s for s in runnable if s not in tasks]
            if frames:
                status.update(self._run_wave(plan, frames, out, provenance))
            if tasks:
                status.update(self.tasks.run_wave(plan, tasks, out, provenance))
        return status

    def _skip(
        self,
        out: ProcessedFile,
        s: PlannedStep,
        provenance: Mapping[str, Mapping[str, Any]],
        why: str,
    ) -> Status:
        self.observer.step_status(s.id, Status.SKIPPED, f"skipped: {why}")
        open_step(out, s, provenance, [])
        out.finish_step(s.id, "skipped", why)
        return Status.SKIPPED

    def _fail_unstarted(
        self,
        out: ProcessedFile,
        s: PlannedStep,
        provenance: Mapping[str, Mapping[str, Any]],
        message: str,
    ) -> Status:
        """A step that failed before it produced anything: its NXprocess, with the reason."""
        open_step(out, s, provenance, [])
        return self._fail(out, s.id, message)

    def _fail(self, out: ProcessedFile, sid: str, message: str) -> Status:
        out.finish_step(sid, "failed", message)
        self.observer.step_status(sid, Status.FAILED, message)
        return Status.FAILED

    def _start(
        self,
        plan: JobPlan,
        steps: list[PlannedStep],
        out: ProcessedFile,
        provenance: Mapping[str, Mapping[str, Any]],
    ) -> tuple[dict[str, _Run], dict[str, Status]]:
        """Build every step of the wave on a worker (all at once) and open its NXprocess."""
        result: dict[str, Status] = {}
        described = {}
        workers = list(self.client.scheduler_info(n_workers=-1)["workers"])
        n_workers = max(1, len(workers))
        for s in steps:
            if not issubclass(s.cls, FrameStep):
                why = f"step type {s.spec.uses} cannot run in this version"
                result[s.id] = self._fail_unstarted(out, s, provenance, why)
                continue
            self.observer.step_status(s.id, Status.RUNNING)
            task = StepTask(s.spec.uses, json.dumps(s.params.model_dump(mode="json")), plan.scan)
            # Build the step on every worker at once (pyFAI's engine takes seconds to build):
            # a live scan's first points then find every worker ready.
            described[s.id] = (
                s,
                task,
                [self.client.submit(step_outputs, task, workers=[w], pure=False) for w in workers],
            )
        runs = {}
        for sid, (s, task, futs) in described.items():
            try:
                specs, said = self.client.gather(futs)[0]
            except Exception as exc:  # the step could not even be built: bad geometry etc.
                result[sid] = self._fail_unstarted(out, s, provenance, reason(exc))
                continue
            open_step(out, s, provenance, specs)
            if said.values or said.messages:
                out.write_values(sid, said.values)
                self.observer.step_result(sid, said)
                for _severity, text in said.messages:
                    log.warning("%s: %s", sid, text)
            info = plan.scan.datasets[str(getattr(s.params, s.cls.source))]
            total = plan.scan.n_points
            if plan.scan.finished:  # a scan that ended early has fewer frames than points
                total = min(total, frame_count(info.shape, s.cls.frame_ndim))
            frame = info.shape[len(info.shape) - s.cls.frame_ndim :]
            frame_bytes = int(np.prod(frame)) * np.dtype(info.dtype).itemsize
            size = batch_size(frame_bytes, total, n_workers, plan.scan.shape[-1])
            runs[sid] = _Run(s, task, total, size)
        return runs, result

    def _run_wave(
        self,
        plan: JobPlan,
        steps: list[PlannedStep],
        out: ProcessedFile,
        provenance: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, Status]:
        # A wave's live steps share one cluster (sizing checks it): the first step's.
        try:
            self.client = self.pool.for_step(steps[0].id)
        except HpcprocError as exc:  # its pool never started (or the job was stopped)
            return {s.id: self._fail_unstarted(out, s, provenance, str(exc)) for s in steps}
        runs, result = self._start(plan, steps, out, provenance)
        if not runs:
            return result
        follower = None
        if not plan.scan.finished:
            first = next(iter(runs.values())).step
            dataset = str(getattr(first.params, first.cls.source))
            follower = ScanFollower(
                plan.scan.path, plan.scan.n_points, dataset, first.cls.frame_ndim
            )
            out.start_swmr()  # from here on, readers may follow the processed file
        try:
            self._loop(runs, follower, out)
        finally:
            if follower is not None:
                follower.close()
        result.update({sid: run.status for sid, run in runs.items() if run.status})
        return result

    def _loop(
        self, runs: dict[str, _Run], follower: ScanFollower | None, out: ProcessedFile
    ) -> None:
        results = as_completed(with_results=True, raise_errors=False)
        # future key -> (run, when its points came, the future)
        owner: dict[str, tuple[_Run, float, Future]] = {}
        complete = max(r.total for r in runs.values())
        finished = True
        while any(r.status is None for r in runs.values()):
            if self.stop.reason is not None:
                self._stop_runs(runs, owner, out, self.stop.reason)
                return
            if follower is not None:
                complete, finished = follower.poll()
            now = time.monotonic()
            busy = False
            for run in runs.values():
                if run.status is not None:
                    continue
                if finished:
                    run.total = min(run.total, complete)
                for indices in self._due(run, complete, finished, now):
                    fut = self.client.submit(
                        process_batch,
                        run.task,
                        indices,
                        retries=run.step.spec.resources.retries,
                        pure=False,
                    )
                    owner[fut.key] = (run, follower.last_change if follower else now, fut)
                    log.debug("%s: submitted points %d..%d", run.step.id, indices[0], indices[-1])
                    results.add(fut)
                    run.pending += 1
                    busy = True
            for fut, value in results.next_batch(block=False) if results.has_ready() else []:
                busy = True
                run, came, _ = owner.pop(fut.key)
                run.pending -= 1
                if isinstance(value, BaseException) or fut.status == "error":
                    # One bad batch (a corrupt frame) fails the step, but the others still
                    # run and are kept: the scientist gets every point that could be processed.
                    exc = value if isinstance(value, BaseException) else fut.exception()
                    run.errors.append(reason(exc))
                else:
                    indices, values = value
                    out.write(run.step.id, indices, values)
                    run.done += len(indices)
                    run.lag = time.monotonic() - came if follower else 0.0
                    log.debug("%s: %d points back, lag %.3f s", run.step.id, len(indices), run.lag)
                    self.observer.step_progress(run.step.id, run.progress(complete))
            for run in runs.values():
                if run.status is None and run.pending == 0:
                    if run.submitted >= run.total:
                        run.status = self._finish(run, out)
                    elif follower is not None and not finished and self._stalled(run, follower):
                        run.status = self._fail(out, run.step.id, self._stall_reason(run))
            if not busy:
                time.sleep(POLL)

    def _stop_runs(
        self,
        runs: dict[str, _Run],
        owner: dict[str, tuple[_Run, float, Future]],
        out: ProcessedFile,
        why: str,
    ) -> None:
        """Cancel the batches not back yet; the steps still running fail with ``why``, keeping
        the points written so far."""
        self.client.cancel([fut for *_, fut in owner.values()])
        owner.clear()
        for run in runs.values():
            if run.status is None:
                message = f"{run.done} of {run.total} points processed; {why}"
                run.status = self._fail(out, run.step.id, message)

    @staticmethod
    def _due(run: _Run, complete: int, finished: bool, now: float) -> list[list[int]]:
        """Batches ready to submit: full ones, and on a live scan a partial one whose points
        have waited MAX_WAIT (latency matters more than batch size there)."""
        available = min(complete, run.total) - run.submitted
        if available <= 0:
            run.waiting_since = None
            return []
        if run.waiting_since is None:
            run.waiting_since = now
        batches = []
        while available >= run.size or (
            available > 0 and (finished or now - run.waiting_since >= MAX_WAIT)
        ):
            n = min(run.size, available)
            batches.append(list(range(run.submitted, run.submitted + n)))
            run.submitted += n
            available -= n
        if available == 0:
            run.waiting_since = None
        return batches

    @staticmethod
    def _stalled(run: _Run, follower: ScanFollower) -> bool:
        return follower.idle > run.step.spec.resources.idle_timeout

    @staticmethod
    def _stall_reason(run: _Run) -> str:
        timeout = run.step.spec.resources.idle_timeout
        return (
            f"{run.done} of {run.total} points processed; the scan's writer stopped: no new "
            f"frame for {timeout:g} s and no end-of-scan marker"
        )

    def _finish(self, run: _Run, out: ProcessedFile) -> Status:
        sid = run.step.id
        if run.errors:
            more = (
                f" (and {len(run.errors) - 1} more failed batches)" if len(run.errors) > 1 else ""
            )
            # Counts first: the LIMS's processingMessage column keeps only 255 characters.
            return self._fail(
                out, sid, f"{run.done} of {run.total} points processed; {run.errors[0]}{more}"
            )
        if run.total == 0:
            return self._fail(out, sid, "no frames to process")
        out.finish_step(sid, "success")
        self.observer.step_status(sid, Status.SUCCESS)
        return Status.SUCCESS
