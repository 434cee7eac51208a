"""Runs the task (downstream) steps of a wave: plan, parts in parallel, finish; then files them.

Every step of the wave is planned on a worker at once; its parts are submitted as soon as its
plan is back, and its finish as soon as its last part is. While they run, the processed file is
closed (:meth:`ProcessedFile.suspended`) so that the workers can read what earlier steps wrote;
the parts' blocks are kept here and written when the wave ends. A part or a finish that raises
fails its step with the reason (the other steps go on); a step's own ``StepResult.failed`` fails
it with its files and messages kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, Future, as_completed

from hpcproc.dispatch.observe import RunObserver, open_step, reason
from hpcproc.dispatch.plan import JobPlan, PlannedStep
from hpcproc.dispatch.pools import ClientPool
from hpcproc.dispatch.stop import Stop
from hpcproc.dispatch.worker import StepTask, task_finish, task_part, task_plan
from hpcproc.errors import HpcprocError
from hpcproc.nexus.processed import ProcessedFile
from hpcproc.progress import Progress
from hpcproc.status import Status
from hpcproc.steps.base import StepContext, StepResult, TaskPlan

log = logging.getLogger(__name__)

POLL = 0.02  # s between looks at the futures while none is ready (and at a stop request)
STOP_GRACE = 15.0  # s a running finish is given to end once the job is stopped


@dataclass
class _Task:
    step: PlannedStep
    task: StepTask
    ctx: StepContext
    plan: TaskPlan | None = None
    blocks: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)
    parts_done: int = 0
    result: StepResult | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)


def workdir(processed: Path, step_id: str) -> Path:
    """Where a task step's files go: beside the processed file, one directory per step."""
    return processed.parent / f"{processed.stem}-{step_id}"


class TaskRunner:
    def __init__(self, pool: ClientPool, observer: RunObserver, stop: Stop | None = None) -> None:
        self.pool = pool
        self.observer = observer
        self.stop = stop or Stop()

    def run_wave(
        self,
        plan: JobPlan,
        steps: list[PlannedStep],
        out: ProcessedFile,
        provenance: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, Status]:
        tasks = {}
        for s in steps:
            open_step(out, s, provenance, [])
            self.observer.step_status(s.id, Status.RUNNING)
            ctx = StepContext(
                step_id=s.id,
                scan=plan.scan,
                processed=out.path,
                workdir=workdir(out.path, s.id),
                needs={n: f"/entry/{n}" for n in s.spec.needs},
                env=s.spec.resources.env,
                stop_file=self.stop.path,
            )
            params = s.params.model_dump_json()
            tasks[s.id] = _Task(s, StepTask(s.spec.uses, params, plan.scan), ctx)
        # Steps on different worker pools run one pool after the other (futures of one
        # as_completed loop must share a client).
        groups: dict[int, tuple[Client, dict[str, _Task]]] = {}
        for sid, t in tasks.items():
            try:
                client = self.pool.for_step(sid)
            except HpcprocError as exc:  # its pool never started (or the job was stopped)
                t.error = str(exc)
                continue
            groups.setdefault(id(client), (client, {}))[1][sid] = t
        with out.suspended():
            for client, group in groups.values():
                self._run(client, group)
        return {sid: self._file(t, out) for sid, t in tasks.items()}

    @staticmethod
    def _submit(client: Client, fn: Any, t: _Task, *args: Any) -> Any:
        retries = t.step.spec.resources.retries
        return client.submit(fn, t.task, t.ctx, *args, retries=retries, pure=False)

    def _run(self, client: Client, tasks: dict[str, _Task]) -> None:
        owner: dict[str, tuple[_Task, str, Any, Future]] = {}
        done = as_completed(with_results=True, raise_errors=False)
        for t in tasks.values():
            fut = self._submit(client, task_plan, t)
            owner[fut.key] = (t, "plan", None, fut)
            done.add(fut)
        grace: float | None = None  # once stopping: when running finishes are given up on
        while owner:
            if grace is None and self.stop.reason is not None:
                grace = time.monotonic() + STOP_GRACE
                self._stopping(client, owner, self.stop.reason)
            if grace is not None and time.monotonic() > grace:
                self._stopping(client, owner, self.stop.reason or "stopped", finishes=True)
                return
            ready = done.next_batch(block=False) if done.has_ready() else []
            if not ready:
                time.sleep(POLL)
            for fut, value in ready:
                self._handle(client, owner, done, fut, value)

    def _stopping(
        self,
        client: Client,
        owner: dict[str, tuple[_Task, str, Any, Future]],
        why: str,
        finishes: bool = False,
    ) -> None:
        """The job is being stopped: cancel what has not reached its finish (and, with
        ``finishes``, the finishes too) and fail those steps with ``why``. A finish already
        running is let be a while: the programs it runs see the stop file and end at once, and
        its logs are then kept."""
        dropped = {k: v for k, v in owner.items() if finishes or v[1] != "finish"}
        client.cancel([fut for *_, fut in dropped.values()])
        for key, (t, *_) in dropped.items():
            del owner[key]
            if t.error is None and t.result is None:
                n = len(t.plan.parts) if t.plan else 0
                t.error = f"{t.parts_done} of {n} parts done; {why}" if n else why

    def _handle(
        self,
        client: Client,
        owner: dict[str, tuple[_Task, str, Any, Future]],
        done: as_completed,
        fut: Future,
        value: Any,
    ) -> None:
        """One returned future: its step's plan, a part, or its finish."""
        found = owner.pop(fut.key, None)
        if found is None:  # cancelled while it ran
            return
        t, stage, part, _ = found
        if t.error is not None:
            return  # a part failed already: the rest of its step no longer matters
        if isinstance(value, BaseException) or fut.status == "error":
            exc = value if isinstance(value, BaseException) else fut.exception()
            where = f"part {part[0]}:{part[1]}: " if stage == "part" else ""
            t.error = f"{where}{reason(exc)}"
            return
        if stage == "plan":
            t.plan = value
            for p in t.plan.parts:
                f = self._submit(client, task_part, t, p)
                owner[f.key] = (t, "part", p, f)
                done.add(f)
        elif stage == "part":
            t.blocks.append((part[0], value))
            t.parts_done += 1
            elapsed = max(1e-9, time.monotonic() - t.started)
            n = len(t.plan.parts) if t.plan else 0
            self.observer.step_progress(
                t.step.id, Progress(t.parts_done, n, n, t.parts_done / elapsed, 0.0)
            )
        else:
            t.result = value
            return
        if t.plan is not None and t.parts_done == len(t.plan.parts) and not self.stop.reason:
            f = self._submit(client, task_finish, t)
            owner[f.key] = (t, "finish", None, f)
            done.add(f)

    def _file(self, t: _Task, out: ProcessedFile) -> Status:
        """Write a step's outputs and results, and say how it ended."""
        sid = t.step.id
        result = t.result
        if t.error is None and result is not None and t.plan is not None:
            try:
                out.add_arrays(sid, t.plan.outputs)
                for start, block in sorted(t.blocks, key=lambda b: b[0]):
                    for key, array in block.items():
                        out.write_block(sid, key, start, np.asarray(array))
                for key, array in result.arrays.items():
                    out.write_block(sid, key, 0, np.asarray(array))
                out.write_values(sid, result.values)
            except (KeyError, ValueError, TypeError, OSError) as exc:
                t.error = f"cannot write its outputs: {reason(exc)}"
        if result is not None:
            self.observer.step_result(sid, result)
        message = t.error or (result.failed if result is not None else None)
        if t.error is None and result is None:
            message = "ended without a result"
        if message:
            out.finish_step(sid, "failed", message)
            self.observer.step_status(sid, Status.FAILED, message)
            return Status.FAILED
        out.finish_step(sid, "success")
        self.observer.step_status(sid, Status.SUCCESS)
        return Status.SUCCESS
