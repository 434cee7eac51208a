"""What a step is: declared parameters, inputs and outputs, and the computation; nothing else.

A step knows nothing of the LIMS, of Dask or of files it does not read: the dispatcher decides
where it runs and the processed-file writer decides where its outputs go.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from hpcproc.nexus.scan import ScanInfo


class StepParams(BaseModel):
    """Base of every step's parameter model: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Axis:
    """Coordinates of one output dimension (e.g. q in nm^-1)."""

    name: str
    values: np.ndarray
    units: str = ""


@dataclass(frozen=True)
class Output:
    """One array a step produces for every scan point; `shape` excludes the scan dimensions."""

    name: str
    shape: tuple[int, ...]
    group: str = "data"  # NXdata group it belongs to; the first output of a group is its signal
    dtype: str = "float32"
    units: str = ""
    long_name: str = ""
    axes: tuple[Axis, ...] = ()  # one per dimension of `shape`

    @property
    def key(self) -> str:
        """Key of this output in the dict returned by :meth:`FrameStep.process`."""
        return f"{self.group}/{self.name}"


class Step(ABC):
    """A registered processing step (entry-point group ``hpcproc.steps``)."""

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]]
    inputs: ClassVar[dict[str, str]] = {}  # input name -> what it is
    outputs: ClassVar[dict[str, str]] = {}  # output name -> what it is
    description: ClassVar[str] = ""


class FrameStep(Step):
    """Reduces every frame (scan point) of one dataset of the scan to a few small arrays.

    The engine builds one instance per worker (construction may be slow: geometry, lookup
    tables) and calls :meth:`process` on batches of frames it has read from the file.
    """

    source: ClassVar[str] = "frames"  # name of the Params field holding the dataset path

    def __init__(self, params: StepParams, scan: ScanInfo) -> None:
        self.params = params
        self.scan = scan

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
