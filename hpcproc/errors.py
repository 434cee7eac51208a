"""Errors that reach the user as one clear line (no traceback)."""

from __future__ import annotations

from pathlib import Path


class HpcprocError(Exception):
    """Base of all errors hpcproc reports to a person; ``str()`` is one line."""


class InputError(HpcprocError):
    """Bad input from a person or another program: the CLI exits with code 2."""


class RecipeError(InputError):
    """A recipe (or cluster profile) is invalid; names file:line:col where known."""

    def __init__(
        self,
        message: str,
        file: str | Path | None = None,
        line: int | None = None,
        col: int | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line  # 1-based
        self.col = col  # 1-based
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<recipe>"
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {self.message}"


class ScanError(InputError):
    """A scan file cannot be used: missing, truncated, or missing a NeXus field."""


class StepError(HpcprocError):
    """A step failed while processing; the message says why."""


class LimsError(HpcprocError):
    """The LIMS could not record or find something."""


class ConflictError(HpcprocError):
    """The thing asked for does not fit the present state (e.g. approving a job twice)."""
