"""Waiting for a program a step runs: until it ends, its timeout, or a request to stop it."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

EVERY = 0.2  # s between looks for a stop request


@dataclass(frozen=True)
class Interrupted:
    """Why a wait ended before the program: its timeout, or a stop request (with its text)."""

    timed_out: bool
    stop_reason: str = ""


def stop_requested(stop_file: Path | None) -> str | None:
    """The text of a stop request written to ``stop_file``, or None if there is none."""
    if stop_file is None:
        return None
    try:
        return stop_file.read_text().strip() or "stop requested"
    except (FileNotFoundError, NotADirectoryError):
        return None


def wait(
    proc: subprocess.Popen, timeout: float, stop_file: Path | None = None
) -> Interrupted | None:
    """Wait for ``proc``; None once it has ended. Never kills it: the caller does, its own way."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Interrupted(timed_out=True)
        try:
            proc.wait(timeout=min(left, EVERY) if stop_file is not None else left)
            return None
        except subprocess.TimeoutExpired:
            pass
        why = stop_requested(stop_file)
        if why is not None:
            return Interrupted(timed_out=False, stop_reason=why)
