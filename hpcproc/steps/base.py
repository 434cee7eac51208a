"""What a step is: declared parameters, inputs and outputs, and the computation; nothing else.

A step knows nothing of the LIMS, of Dask or of files it does not read: the dispatcher decides
where it runs and the processed-file writer decides where its outputs go.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from hpcproc.outputs import ArrayOutput, Axis, Output
from hpcproc.scaninfo import ScanInfo

__all__ = [
    "ArrayOutput",
    "Axis",
    "FrameStep",
    "Output",
    "Step",
    "StepContext",
    "StepParams",
    "StepResult",
    "TaskPlan",
    "TaskStep",
]


class StepParams(BaseModel):
    """Base of every step's parameter model: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(ABC):
    """A registered processing step (entry-point group ``hpcproc.steps``)."""

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]]
    inputs: ClassVar[dict[str, str]] = {}  # input name -> what it is
    # parameter -> the role (hpcproc.scaninfo.ROLES) whose dataset it takes when not given
    roles: ClassVar[dict[str, str]] = {}
    outputs: ClassVar[dict[str, str]] = {}  # output name -> what it is
    description: ClassVar[str] = ""

    @classmethod
    def input_problems(cls, params: StepParams, scan: ScanInfo) -> list[str]:
        """Why the step's inputs cannot be read from ``scan`` (empty: they can); checked
        before a job is recorded or a cluster started. By default: the inputs read from the
        scan file (those with a role) that hold a dataset path."""
        return [
            problem
            for name in cls.inputs
            if name in cls.roles
            if (problem := cls.input_problem(name, getattr(params, name, None), scan))
        ]

    @classmethod
    def input_problem(cls, name: str, value: Any, scan: ScanInfo) -> str | None:
        """Why input ``name`` (a dataset path, or None) cannot be read from ``scan``."""
        if not (isinstance(value, str) and value.startswith("/")):
            return None
        if (why := scan.missing_input(value)) is None:
            return None
        role = cls.roles.get(name)
        if role is not None and role not in scan.roles and value not in scan.missing_links:
            return f"{name}: layout {scan.layout} found no {role} dataset in {scan.path.name}"
        return f"{name}: {why}"

    @classmethod
    def memory_estimate(cls, params: StepParams, scan: ScanInfo) -> tuple[int, str] | None:
        """Bytes one task of this step may hold at once on a worker, and how that was worked
        out (said to a person when it does not fit); None: nothing special (the dispatcher's
        default). Known before the job runs, from the scan's shape and dtype only."""
        return None


class FrameStep(Step):
    """Reduces every frame (scan point) of one dataset of the scan to a few small arrays.

    The engine builds one instance per worker (construction may be slow: geometry, lookup
    tables) and calls :meth:`process` on batches of frames it has read from the file.
    """

    source: ClassVar[str] = "frames"  # name of the Params field holding the dataset path
    frame_ndim: ClassVar[int] = 2  # dimensions of one frame; the dataset's others are points

    def __init__(self, params: StepParams, scan: ScanInfo) -> None:
        self.params = params
        self.scan = scan
        # What the step decided while it was built (e.g. the detector's orientation), kept in
        # its NXprocess and the LIMS; warnings are said to the person too.
        self.notes: dict[str, Any] = {}
        self.warnings: list[str] = []

    @property
    def dataset(self) -> str:
        return str(getattr(self.params, self.source))

    @classmethod
    def reuse_key(cls, params: StepParams, scan: ScanInfo) -> tuple:
        """Instances with equal keys are interchangeable, so a worker builds one and reuses it.
        By default a step belongs to one scan; a step whose set-up depends only on its
        parameters (pyFAI geometry) says so, and is reused across the scans of a visit."""
        return (str(scan.path),)

    @abstractmethod
    def output_specs(self) -> list[Output]:
        """The per-point outputs, known before any frame is processed."""

    @abstractmethod
    def process(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Reduce a batch ``(n, *frame_shape)`` to ``{Output.key: (n, *Output.shape)}``."""


# ---------------------------------------------------------------- downstream (task) steps


@dataclass(frozen=True)
class StepContext:
    """What a task step may look at, all plain data (it runs on any worker of the cluster).

    ``processed`` is the job's processed NeXus file, holding what earlier steps wrote (read it,
    never write it); ``needs`` maps the ids of the steps this one needs to their NXprocess
    path in it; ``workdir`` is a directory of the step's own for files it makes (they are
    attached to the job when listed in :class:`StepResult`). A program the step runs should
    be stopped once ``stop_file`` exists (the job was cancelled; the file says why):
    :func:`hpcproc.processes.wait` looks for it."""

    step_id: str
    scan: ScanInfo
    processed: Path
    workdir: Path
    needs: dict[str, str]
    env: str | None = None  # the recipe's resources.env: a named environment in envs/
    stop_file: Path | None = None


@dataclass(frozen=True)
class TaskPlan:
    """How a task step's work is split: ``parts`` are (start, stop) blocks along axis 0 of the
    split outputs, run in parallel on the workers; ``outputs`` are known before they run."""

    outputs: list[ArrayOutput] = field(default_factory=list)
    parts: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class StepResult:
    """What a task step hands back at the end, besides its split outputs.

    ``arrays``: its outputs that are not split ({ArrayOutput.key: array}); ``values``: small
    results worth a record (e.g. the centre of rotation found), kept in the NXprocess and the
    LIMS; ``attachments``: (file, type) with type one of Log, Result, Graph, Debug, Input;
    ``messages``: (severity, text) for the LIMS; ``failed``: a reason if the step failed in a
    way it could describe (a failing cell, a non-zero exit) after making some of its files."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    attachments: list[tuple[Path, str]] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    failed: str | None = None


class TaskStep(Step):
    """Runs once the scan has ended (phase downstream), on the whole of its inputs: a
    reconstruction, a notebook, a wrapped program. The engine calls :meth:`plan` once, then
    :meth:`run` for every part (in parallel, anywhere on the cluster), then :meth:`finish`.
    Raising fails the step with the exception's message; the job's other results are kept."""

    def __init__(self, params: StepParams, scan: ScanInfo) -> None:
        self.params = params
        self.scan = scan

    def plan(self, ctx: StepContext) -> TaskPlan:
        """The outputs and the parts (default: no parts, everything in :meth:`finish`)."""
        return TaskPlan()

    def run(self, ctx: StepContext, part: tuple[int, int]) -> dict[str, np.ndarray]:
        """One part: ``{ArrayOutput.key: block}`` for every split output, each block covering
        ``part[0]:part[1]`` of axis 0."""
        raise NotImplementedError(f"{self.name} has parts but no run()")

    @abstractmethod
    def finish(self, ctx: StepContext) -> StepResult:
        """After every part: the remaining outputs, values, attachments and messages."""
