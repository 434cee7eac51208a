"""Looking after the LIMS outbox files of $HPCPROC_HOME/lims-outbox (see :mod:`.outbox`).

Each recording process has one file. A file whose process is alive is *in use* (its lock is
held) and only read here. A dead process's file holds what it could not apply: writes still
*pending* (the database was down; the next hpcproc start replays them) and writes the LIMS
*refused*, kept with the reason. Refused writes can be retried once the cause is mended (a
record restored, a schema fixed) or discarded after a person has looked at them.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hpcproc.errors import InputError


@dataclass(frozen=True)
class OutboxFile:
    path: Path
    in_use: bool  # its process is alive and recording
    pending: int
    failed: int
    oldest_pending: datetime | None
    last_error: str | None  # the newest refused write's reason


@dataclass(frozen=True)
class Refused:
    seq: int
    method: str
    created: datetime
    error: str


def in_use(path: Path) -> bool:
    """True while a process holds the outbox file's lock."""
    with open(f"{path}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def _open(path: Path, write: bool = False) -> Iterator[sqlite3.Connection]:
    uri = f"file:{path}" + ("" if write else "?mode=ro")
    db = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def outbox_files(directory: Path) -> list[OutboxFile]:
    """Every outbox file in ``directory``, oldest first."""
    found = []
    for path in sorted(directory.glob("*.sqlite"), key=lambda p: p.stat().st_mtime):
        with _open(path) as db:
            counts = dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state"))
            oldest = db.execute(
                "SELECT min(created) FROM outbox WHERE state = 'pending'"
            ).fetchone()[0]
            error = db.execute(
                "SELECT error FROM outbox WHERE state = 'failed' ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        found.append(
            OutboxFile(
                path,
                in_use(path),
                counts.get("pending", 0),
                counts.get("failed", 0),
                datetime.fromtimestamp(oldest) if oldest else None,
                error[0] if error else None,
            )
        )
    return found


def refused(path: Path) -> list[Refused]:
    """The writes the LIMS refused in one outbox file, oldest first."""
    with _open(path) as db:
        rows = db.execute(
            "SELECT seq, method, created, error FROM outbox WHERE state = 'failed' ORDER BY seq"
        ).fetchall()
    return [Refused(seq, m, datetime.fromtimestamp(t), e or "") for seq, m, t, e in rows]


def _dead(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"no LIMS outbox file {path}")
    if in_use(path):
        raise InputError(f"LIMS outbox {path} is in use by a running process: leave it to it")
    return path


def retry_refused(path: Path) -> int:
    """Queue a dead process's refused writes again (the next replay applies them in their
    original order); how many."""
    with _open(_dead(path), write=True) as db:
        db.execute("BEGIN IMMEDIATE")
        # creates refused: their local ids lose the error that failed the rows using them
        db.execute(
            "UPDATE ids SET error = NULL WHERE db IS NULL AND "
            "local IN (SELECT -seq FROM outbox WHERE state = 'failed')"
        )
        n = db.execute(
            "UPDATE outbox SET state = 'pending', error = NULL, attempts = 0 WHERE state = 'failed'"
        ).rowcount
        db.execute("COMMIT")
        return n


def discard_refused(path: Path) -> int:
    """Drop a dead process's refused writes, once looked at; how many."""
    with _open(_dead(path), write=True) as db:
        return db.execute("DELETE FROM outbox WHERE state = 'failed'").rowcount
