"""The LIMS a processing run records through: a durable outbox per process under $HPCPROC_HOME.

Each process that records (``hpcproc run``, ``demo``, ``reprocess``, ``launcher``) gets
its own outbox file, so runs never wait for one another. At start, outboxes left by processes
that died (their lock is free) are replayed into the LIMS first: a restart loses nothing.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from hpcproc.errors import LimsError
from hpcproc.lims.outbox import DurableLims

log = logging.getLogger(__name__)


def outbox_dir(home: Path) -> Path:
    return home / "lims-outbox"


def replay_orphans(url: str, directory: Path, timeout: float = 10.0) -> int:
    """Apply what dead processes left in their outboxes; returns the writes still pending."""
    left = 0
    for path in sorted(directory.glob("*.sqlite")):
        try:
            orphan = DurableLims(url, path)
        except LimsError:  # locked: its process is alive and recording
            continue
        orphan.flush(timeout)
        pending, failed = orphan.pending(), orphan.failed()
        orphan.close(flush_timeout=0)
        if pending:
            left += pending
            log.warning("LIMS outbox %s: %d writes still pending (database down?)", path, pending)
        elif failed:
            log.warning("LIMS outbox %s: %d writes refused, kept for inspection", path, len(failed))
        else:
            _remove(path)
    return left


def recording_lims(url: str, home: Path) -> DurableLims:
    """A DurableLims on a fresh outbox of this process, after replaying dead processes' ones."""
    directory = outbox_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    replay_orphans(url, directory)
    lims = DurableLims(url, directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sqlite")
    try:  # connect (and check the schema) now, so the first records get the database's ids
        lims.jobs(limit=1)
    except LimsError as exc:
        log.warning("LIMS not reachable (%s): recording to the outbox %s", exc, lims.outbox_path)
    return lims


def finish(lims: DurableLims, timeout: float = 10.0) -> None:
    """Close a recording LIMS; its outbox file goes when everything reached the database."""
    lims.flush(timeout)
    done = not lims.pending() and not lims.failed()
    lims.close(flush_timeout=0)
    if done:
        _remove(lims.outbox_path)
    else:
        log.warning("LIMS outbox %s kept: the next hpcproc start replays it", lims.outbox_path)


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
