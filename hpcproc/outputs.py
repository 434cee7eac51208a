"""What steps produce, described before they run (ground floor): the processed-file writer
lays out its NXdata from these, the steps fill them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


@dataclass(frozen=True)
class ArrayOutput:
    """A whole array a task step produces (e.g. a volume q x y x x), not one per scan point.

    With ``split`` the step's parts each produce a block of it along axis 0 (see
    :meth:`TaskStep.run`); without, :meth:`TaskStep.finish` produces it whole."""

    name: str
    shape: tuple[int, ...]
    group: str = "data"  # NXdata group; its first output is the signal
    dtype: str = "float32"
    units: str = ""
    long_name: str = ""
    axes: tuple[Axis, ...] = ()  # one per dimension of `shape`, where known
    split: bool = False

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"
