"""What runs inside a Dask worker: read frames from the scan file, run a step on them.

Only indices travel through the scheduler (FACTS.md: 7.4 MB frames as task arguments cap a
LocalCluster at ~80 frames/s); each worker reads and decodes the frames itself, and keeps its step
instances (pyFAI engines take 1-2 s to build) and open readers between tasks.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcproc.nexus.frames import FrameReader
from hpcproc.nexus.scan import ScanInfo
from hpcproc.steps.base import FrameStep, Output
from hpcproc.steps.registry import get_step


@dataclass(frozen=True)
class StepTask:
    """Everything a worker needs to rebuild a step: small and picklable."""

    uses: str
    params_json: str  # the step's validated parameters, as JSON (also the cache key)
    scan: ScanInfo

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.uses, self.params_json, str(self.scan.path))

    def build(self) -> FrameStep:
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
_readers = _Lru(8)


def step_outputs(task: StepTask) -> list[Output]:
    """The step's output specs (built on a worker, which also warms that worker's cache)."""
    return _steps.get_or_make(task.key, task.build).output_specs()


def process_batch(task: StepTask, indices: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read frames ``indices`` of the step's dataset and reduce them."""
    step: FrameStep = _steps.get_or_make(task.key, task.build)
    reader: FrameReader = _readers.get_or_make(
        (str(task.scan.path), step.dataset), lambda: FrameReader(task.scan.path, step.dataset)
    )
    if max(indices) >= reader.n_frames:
        reader.refresh()  # the file may have grown since the reader was opened
    frames = reader.read_batch(indices)
    return np.asarray(indices), step.process(frames)
