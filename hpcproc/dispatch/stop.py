"""A request to stop a running job, with its reason: seen by the dispatcher and by programs.

The process running a job holds one :class:`Stop`. Whoever learns that the job is to stop (a
cancel recorded in the LIMS, say) calls :meth:`Stop.request`; the dispatcher's loops look at
:attr:`Stop.reason` between tasks. Programs that steps run on the workers (a command, a
notebook, a batch job) cannot see this process, so the request is also written to a file beside
the processed file, which their waits look for (:func:`hpcproc.processes.wait`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

from hpcproc.errors import HpcprocError

log = logging.getLogger(__name__)


class Stopped(HpcprocError):
    """A wait given up because the job was asked to stop (the message is the request)."""


def stop_file(processed: Path) -> Path:
    """Where a job's stop request is written: beside its processed file (shared with workers)."""
    return processed.with_name(f"{processed.stem}.stop")


class Stop:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._reason: str | None = None
        self._lock = threading.Lock()
        if path is not None:  # a request left by an earlier run of the same file is not ours
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @property
    def reason(self) -> str | None:
        """Why the job is to stop; None while it is not."""
        return self._reason

    def request(self, reason: str) -> bool:
        """Ask the job to stop; the first request wins (False for later ones)."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
        if self.path is not None:
            tmp = self.path.with_name(f"{self.path.name}.tmp")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)  # before the job's first file
                tmp.write_text(reason)
                tmp.replace(self.path)  # whole or not at all, for a reader on another host
            except OSError as exc:  # the dispatcher still stops; programs run to their end
                log.warning("cannot write the stop request %s: %s", self.path, exc)
        return True

    def close(self) -> None:
        """The job has ended: its stop file goes."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
