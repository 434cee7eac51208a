"""What the engines tell the world about steps, and the NXprocess every step gets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from hpcproc.dispatch.plan import PlannedStep
from hpcproc.nexus.processed import ProcessedFile
from hpcproc.progress import Progress
from hpcproc.status import Status
from hpcproc.steps.base import Output, StepResult


class RunObserver(Protocol):
    """Told about every change of a step; the LIMS and the CLI's progress bar listen."""

    def step_status(self, step_id: str, status: Status, message: str = "") -> None: ...

    def step_progress(self, step_id: str, progress: Progress) -> None: ...

    def step_result(self, step_id: str, result: StepResult) -> None:
        """A task step's values, messages and attachments (before its final status)."""


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def open_step(
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
