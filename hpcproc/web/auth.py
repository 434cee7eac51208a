"""Who may see and do what: users belong to visits; facility staff see every visit.

Users, their visits and their tokens live in a small SQLite file of the web service
(``$HPCPROC_HOME/web-users.sqlite``), not in ISPyB: the LIMS is the record of science, this is
the door. A token is 32 random bytes shown once when made; only its SHA-256 is stored (a
token is as long as a key, so a plain hash is enough: there is nothing to guess). Requests
carry it as ``Authorization: Bearer <token>`` (API) or the ``hpcproc_token`` cookie (pages).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from hpcproc.errors import InputError
from hpcproc.lims.adapter import parse_visit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, staff INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS user_visits (
    name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    visit TEXT NOT NULL,
    PRIMARY KEY (name, visit)
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created REAL NOT NULL DEFAULT (julianday('now'))
);
"""


@dataclass(frozen=True)
class User:
    name: str
    staff: bool
    visits: frozenset[str]  # "cm12345-1" (a session) or "cm12345" (every session of it)

    def can_see(self, visit: str | None) -> bool:
        """Staff see everything; others their visits (a proposal grants all its sessions)."""
        if self.staff:
            return True
        if not visit:
            return False
        proposal = visit.split("-", 1)[0]
        return visit in self.visits or proposal in self.visits


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """The users file: add users and visits, make tokens, find the user of a token."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def add(self, name: str, visits: list[str] = (), staff: bool = False) -> str:  # type: ignore[assignment]
        """Create (or update) a user with visits; returns a new token (shown only now)."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise InputError(f"user name {name!r}: letters, digits, '-', '_' and '.' only")
        for visit in visits:
            if "-" in visit:
                parse_visit(visit)  # a session: cm12345-1
            elif not visit.rstrip("0123456789") or not visit[-1:].isdigit():
                raise InputError(f"visit {visit!r} is neither like cm12345-1 nor cm12345")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO users (name, staff) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET staff = excluded.staff",
                (name, int(staff)),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO user_visits (name, visit) VALUES (?, ?)",
                [(name, v) for v in visits],
            )
            self._db.execute(
                "INSERT INTO tokens (hash, name) VALUES (?, ?)", (token_hash(token), name)
            )
            self._db.execute("COMMIT")
        return token

    def revoke(self, name: str) -> int:
        """Remove every token of a user; how many there were."""
        with self._lock:
            return self._db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount

    def user(self, token: str | None) -> User | None:
        """The user a token belongs to, or None (unknown, revoked, or no token)."""
        if not token:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT u.name, u.staff FROM tokens t JOIN users u ON u.name = t.name "
                "WHERE t.hash = ?",
                (token_hash(token),),
            ).fetchone()
            if row is None:
                return None
            visits = self._db.execute(
                "SELECT visit FROM user_visits WHERE name = ?", (row[0],)
            ).fetchall()
        return User(row[0], bool(row[1]), frozenset(v for (v,) in visits))
