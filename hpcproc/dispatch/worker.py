"""What runs inside a Dask worker: read frames from the scan file, run a step on them.

Only indices travel through the scheduler (FACTS.md: 7.4 MB frames as task arguments cap a
LocalCluster at ~80 frames/s); each worker reads and decodes the frames itself, and keeps its step
instances (pyFAI engines take 1-2 s to build) and open readers between tasks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from hpcproc.errors import HpcprocError
from hpcproc.formats import open_frames
from hpcproc.scaninfo import ScanInfo
from hpcproc.steps.base import FrameStep, Output, StepContext, StepResult, TaskPlan
from hpcproc.steps.registry import get_step


def _keep_large_allocations_on_heap(threshold: int = 64 * 2**20) -> None:
    """Dask starts workers with MALLOC_TRIM_THRESHOLD_ set, which turns off glibc's dynamic mmap
    threshold: every buffer over 128 kB that Blosc allocates while decoding is then mmapped and
    page-faulted afresh. Measured on 8x4096 uint32 chunks: 5,000 decodes/s in a worker against
    20,000 in a plain process; raising M_MMAP_THRESHOLD restores the latter."""
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name)
    if hasattr(libc, "mallopt"):
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, threshold)


_keep_large_allocations_on_heap()


def _ours(cls: type = HpcprocError) -> set[str]:
    return {cls.__name__} | {n for sub in cls.__subclasses__() for n in _ours(sub)}


class _ReportedFailures(logging.Filter):
    """Drops the worker's "Compute Failed" log (a traceback on the terminal) for a step that
    failed with one of hpcproc's own errors: a reason the step's record gives in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed") or len(record.args or ()) < 4:
            return True
        exception = str(record.args[3])  # type: ignore[index]
        return exception.split("(", 1)[0] not in _ours()


logging.getLogger("distributed.worker").addFilter(_ReportedFailures())


@dataclass(frozen=True)
class StepTask:
    """Everything a worker needs to rebuild a step: small and picklable."""

    uses: str
    params_json: str  # the step's validated parameters, as JSON (also the cache key)
    scan: ScanInfo

    @cached_property
    def key(self) -> tuple:
        """Which built step this task can reuse on its worker (computed once per task)."""
        cls = get_step(self.uses)
        params = cls.Params.model_validate(json.loads(self.params_json))
        return (self.uses, self.params_json, *cls.reuse_key(params, self.scan))

    def build(self) -> Any:  # FrameStep or TaskStep
        cls = get_step(self.uses)
        params = cls.Params.model_validate(json.loads(self.params_json))
        return cls(params, self.scan)  # type: ignore[call-arg]


class _Lru(OrderedDict):
    """A tiny LRU of open things; evicted values are closed if they can be."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.lock = threading.Lock()

    def get_or_make(self, key: Any, make: Any) -> Any:
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with self.lock:
            self[key] = value
            while len(self) > self.size:
                _, old = self.popitem(last=False)
                if hasattr(old, "close"):
                    old.close()
        return value


_steps = _Lru(8)
_sources = _Lru(8)


def step_outputs(task: StepTask) -> tuple[list[Output], StepResult]:
    """The step's output specs and what it decided while being built (on a worker, which
    also warms that worker's cache)."""
    step: FrameStep = _steps.get_or_make(task.key, task.build)
    said = StepResult(values=dict(step.notes), messages=[("WARNING", w) for w in step.warnings])
    return step.output_specs(), said


class _Source:
    """An open reader and decode buffers reused between tasks (steps copy what they keep)."""

    def __init__(self, scan: ScanInfo, dataset: str, frame_ndim: int) -> None:
        self.reader = open_frames(scan, dataset, frame_ndim)
        self.local = threading.local()  # a worker may run several tasks at once, in threads

    def read(self, indices: list[int]) -> np.ndarray:
        if max(indices) >= self.reader.n_frames:
            self.reader.refresh()  # the file may have grown since it was opened
        buf = getattr(self.local, "buffer", None)
        if buf is None or buf.shape[0] < len(indices):
            buf = self.local.buffer = np.empty(
                (len(indices), *self.reader.frame_shape), self.reader.dtype
            )
        return self.reader.read_batch(indices, out=buf[: len(indices)])

    def close(self) -> None:
        self.reader.close()


def process_batch(task: StepTask, indices: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read frames ``indices`` of the step's dataset and reduce them."""
    step: FrameStep = _steps.get_or_make(task.key, task.build)
    key = (str(task.scan.path), step.dataset)
    source: _Source = _sources.get_or_make(
        key, lambda: _Source(task.scan, step.dataset, step.frame_ndim)
    )
    return np.asarray(indices), step.process(source.read(indices))


# ---------------------------------------------------------------- task (downstream) steps


def task_plan(task: StepTask, ctx: StepContext) -> TaskPlan:
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    return task.build().plan(ctx)


def task_part(task: StepTask, ctx: StepContext, part: tuple[int, int]) -> dict[str, np.ndarray]:
    return task.build().run(ctx, part)


def task_finish(task: StepTask, ctx: StepContext) -> StepResult:
    return task.build().finish(ctx)
