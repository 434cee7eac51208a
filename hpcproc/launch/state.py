"""What the launcher has seen and started: a local SQLite file, so redelivered messages and a
restarted launcher start nothing twice.

- ``scans``: one row per scan key (GDA scan id, bluesky run uid, watched file): its file and
  metadata as first announced, and its latest state. Later events that lack the file (a bluesky
  stop) find it here.
- ``jobs``: one row per (scan file, recipe), unique: the launcher's idempotence. A row is
  *claimed* before the job is recorded in the LIMS, then carries the LIMS job id (*recorded*),
  then *running*, *done* or *failed*; or *awaiting approval* (recorded and held, see
  :mod:`hpcproc.approval`: whoever approves it runs it). The overrides the job was asked with
  are kept, so a job that a stopped launcher left unfinished can be run again when it restarts.

Writes are ``synchronous=FULL``: a message is acknowledged after its rows are written, so they
must survive a crash.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcproc.launch.events import ScanEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    path TEXT,
    scan_id TEXT,
    beamline TEXT,
    visit TEXT,
    state TEXT NOT NULL,
    first_seen REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    path TEXT NOT NULL,
    recipe TEXT NOT NULL,
    scan_key TEXT NOT NULL,
    overrides TEXT NOT NULL,
    job_id INTEGER,
    state TEXT NOT NULL,
    message TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (path, recipe)
);
"""

UNFINISHED = ("claimed", "recorded", "running")
AWAITING_APPROVAL = "awaiting approval"  # recorded, held for staff: not resumed, not run here


@dataclass(frozen=True)
class ScanRow:
    key: str
    source: str
    path: Path | None
    scan_id: str | None
    beamline: str | None
    visit: str | None
    state: str


@dataclass(frozen=True)
class JobRow:
    path: Path
    recipe: str
    scan_key: str
    overrides: dict[str, Any]
    job_id: int | None
    state: str
    message: str | None


class LauncherState:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ scans

    def remember(self, event: ScanEvent) -> ScanRow:
        """Record ``event``; the scan as now known (earlier events fill what it lacks)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO scans (key, source, path, scan_id, beamline, visit, state, "
                "first_seen, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET path = coalesce(scans.path, excluded.path), "
                "scan_id = coalesce(scans.scan_id, excluded.scan_id), "
                "beamline = coalesce(scans.beamline, excluded.beamline), "
                "visit = coalesce(scans.visit, excluded.visit), "
                "state = excluded.state, updated = excluded.updated",
                (
                    event.key,
                    event.source,
                    str(event.path) if event.path else None,
                    event.scan_id,
                    event.beamline,
                    event.visit,
                    event.state.value,
                    now,
                    now,
                ),
            )
        scan = self.scan(event.key)
        assert scan is not None
        return scan

    def scan(self, key: str) -> ScanRow | None:
        rows = self._run(
            "SELECT key, source, path, scan_id, beamline, visit, state FROM scans WHERE key = ?",
            (key,),
        )
        if not rows:
            return None
        key, source, path, scan_id, beamline, visit, state = rows[0]
        return ScanRow(key, source, Path(path) if path else None, scan_id, beamline, visit, state)

    # ------------------------------------------------------------ jobs

    def claim(self, path: Path, recipe: str, scan_key: str, overrides: dict[str, Any]) -> bool:
        """True if this (scan file, recipe) had no job yet and is now claimed."""
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO jobs (path, recipe, scan_key, overrides, state, created, "
                "updated) VALUES (?, ?, ?, ?, 'claimed', ?, ?)",
                (str(path), recipe, scan_key, json.dumps(overrides, default=str), now, now),
            )
            return cursor.rowcount == 1

    def update_job(
        self,
        path: Path,
        recipe: str,
        state: str,
        job_id: int | None = None,
        message: str | None = None,
    ) -> None:
        self._run(
            "UPDATE jobs SET state = ?, job_id = coalesce(?, job_id), message = ?, updated = ? "
            "WHERE path = ? AND recipe = ?",
            (state, job_id, message, time.time(), str(path), recipe),
        )

    def jobs(self, *states: str) -> list[JobRow]:
        """Jobs in any of ``states`` (all when none given), oldest first."""
        where = f"WHERE state IN ({', '.join('?' * len(states))})" if states else ""
        rows = self._run(
            "SELECT path, recipe, scan_key, overrides, job_id, state, message FROM jobs "
            f"{where} ORDER BY created",
            states,
        )
        return [JobRow(Path(p), r, k, json.loads(o), j, s, m) for p, r, k, o, j, s, m in rows]

    def counts(self) -> dict[str, int]:
        return dict(self._run("SELECT state, count(*) FROM jobs GROUP BY state"))
