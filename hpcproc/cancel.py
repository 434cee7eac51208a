"""Cancelling a job while it runs, from any process: the CLI, the web service, a script.

Cancelling records the job parameter :data:`CANCEL` once: ``cancelled by <user> at <time>[:
<reason>]``. The process running the job looks for it about once a second (:func:`watch_cancel`)
and asks its dispatcher to stop (:class:`~hpcproc.dispatch.stop.Stop`): nothing more is
submitted, what waits on the cluster is cancelled, running steps fail with that text (keeping
every point and file they made; programs they run are killed and batch jobs terminated) and
steps not yet started are skipped. Both processes need only the LIMS and the processed file's
directory, so they may be on different hosts. A job whose process is gone cannot answer:
:func:`close_open_steps` then marks its open steps, as ``hpcproc cancel --force`` does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from hpcproc.dispatch.stop import Stop
from hpcproc.errors import ConflictError
from hpcproc.job_keys import APPROVAL, AWAITING, CANCEL
from hpcproc.lims import Lims
from hpcproc.lims.records import JobRecord
from hpcproc.status import Status

__all__ = ["CANCEL", "cancel_of", "close_open_steps", "request_cancel", "watch_cancel"]

log = logging.getLogger(__name__)

EVERY = 1.0  # s between a running job's looks at the LIMS
FIRST_LOOK = 2.0  # s a job waits at most for its first look (a LIMS that hangs delays no more)


def cancel_of(record: JobRecord | Mapping[str, Any]) -> str | None:
    """The cancel record of a job (a JobRecord or its parameters); None if never cancelled."""
    params = record if isinstance(record, Mapping) else record.parameters
    value = params.get(CANCEL)
    return value if isinstance(value, str) and value else None


def ended(record: JobRecord) -> bool:
    return all(s.status.final for s in record.steps)


def request_cancel(lims: Lims, job_id: int, by: str, reason: str = "") -> str:
    """Record that ``job_id`` is to be cancelled; the text recorded. ConflictError if the job
    has ended, awaits approval (reject it instead) or is being cancelled already."""
    record = lims.job(job_id)
    if record.parameters.get(APPROVAL) == AWAITING:
        raise ConflictError(f"job {job_id} is awaiting approval: reject it instead")
    already = cancel_of(record)
    if already is not None:
        raise ConflictError(f"job {job_id} is {already}")
    if ended(record):
        raise ConflictError(f"job {job_id} has ended ({record.status.value}): nothing to cancel")
    why = " ".join(reason.split())
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    text = f"cancelled by {by} at {now}" + (f": {why}" if why else "")
    if not lims.add_parameter_once(job_id, CANCEL, text):  # someone was quicker
        raise ConflictError(f"job {job_id} is {cancel_of(lims.job(job_id)) or 'cancelled'}")
    return text


def close_open_steps(lims: Lims, job_id: int, text: str) -> int:
    """For a cancelled job whose process is gone: its running steps are marked failed and its
    queued ones skipped, with ``text``. How many were open."""
    open_steps = [s for s in lims.job(job_id).steps if not s.status.final]
    for s in open_steps:
        status = Status.FAILED if s.status == Status.RUNNING else Status.SKIPPED
        lims.set_status(s.id, status, f"{text} (no process answered)")
    return len(open_steps)


@contextmanager
def watch_cancel(lims: Any, job_id: int, stop: Stop, every: float = EVERY) -> Iterator[None]:
    """While the block runs (the job), look for a cancel of ``job_id`` and pass it to ``stop``.
    The block starts after the first look (or FIRST_LOOK s, if the LIMS is slow to answer), so
    a job cancelled before it started runs nothing. A LIMS that cannot be read (down) only
    delays this; it never disturbs the job."""
    done, looked = threading.Event(), threading.Event()

    def seen() -> bool:
        try:
            found = lims.job_parameter(job_id, CANCEL)
        except Exception as exc:  # down, or the job's id not in the database yet
            log.debug("job %s: cannot look for a cancel: %s", job_id, exc)
            found = None
        if isinstance(found, str) and found:
            log.info("job %s: %s", job_id, found)
            stop.request(found)
        looked.set()  # after the request: the job starts knowing it
        return stop.reason is not None

    def look() -> None:
        if seen():
            return
        while not done.wait(every) and not seen():
            pass

    watcher = threading.Thread(target=look, name=f"cancel-watch-{job_id}", daemon=True)
    watcher.start()
    looked.wait(FIRST_LOOK)
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=5)
