"""Scan events from the file system: the embedded default source when no broker is configured.

The watch polls the directory tree every ``interval`` seconds instead of using inotify: on the
parallel file systems beamline data lives on (GPFS, Lustre), inotify only reports changes made
by the node it runs on, and detectors write from other nodes, so their files would never be
seen. Polling sees every node's writes, at the cost of one directory walk per interval.

A new file matching ``pattern`` (outside any ``processed`` directory, where results go) becomes
a STARTED event once its NeXus metadata can be read (a file is often visible before its writer
has created the structure, so :class:`~hpcproc.errors.ScanError` is retried quietly for up to
``wait`` seconds), and a FINISHED event once its end-of-scan marker is set. As with a broker's
messages, the sink's answer decides: an :class:`~hpcproc.errors.InputError` (MessageError
included) means the file can never be used: one JSON line goes to ``dead_letters`` and the file
is left alone; any other exception is a passing problem: the same event is offered again on a
later poll, and dead-lettered after ``MAX_ATTEMPTS`` tries.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hpcproc.errors import InputError, ScanError
from hpcproc.formats import read_scan_info
from hpcproc.launch.events import ScanEvent, ScanState
from hpcproc.launch.source import MAX_ATTEMPTS, Sink
from hpcproc.scaninfo import ScanInfo

log = logging.getLogger(__name__)

IGNORED_DIR = "processed"  # hpcproc's own outputs (and their .nxs files) live under these


@dataclass
class _Watched:
    """A file the watch has seen and not yet finished with."""

    first_seen: float  # time.monotonic()
    started: bool = False  # STARTED handled
    failures: int = 0  # passing failures of the event now being offered


class FileWatch:
    """Watches ``root`` for scan files (see the module doc)."""

    def __init__(
        self,
        root: Path,
        *,
        pattern: str = "*.nxs",
        interval: float = 1.0,
        recursive: bool = True,
        dead_letters: Path | None = None,
        existing: bool = True,
        wait: float = 60.0,
    ) -> None:
        self.root = Path(root).absolute()  # events name files by absolute path
        self.pattern = pattern
        self.interval = interval
        self.recursive = recursive
        self.dead_letters = Path(dead_letters) if dead_letters is not None else None
        # Files already there count as new by default: a restarted launcher picks up the scans
        # it missed, and handling a scan twice is harmless (the launcher is idempotent).
        self.existing = existing
        self.wait = wait
        self.name = f"watch {self.root / pattern}"
        self.last_error: str | None = None
        self._watched: dict[Path, _Watched] = {}
        self._done: set[Path] = set()  # finished, dead-lettered or skipped: never looked at again

    @property
    def connected(self) -> bool:
        return self.root.is_dir()

    def run(self, sink: Sink, stop: threading.Event) -> None:
        if not self.existing:
            self._done.update(self._files())
        while not stop.is_set():
            try:
                self.poll(sink)
            except OSError as exc:  # e.g. the dead-letter file cannot be written: try again later
                log.warning("%s: poll failed: %s", self.name, exc)
            stop.wait(self.interval)

    def poll(self, sink: Sink) -> None:
        """One look at the tree: new files, then every file not finished yet."""
        if not self.connected:
            if self.last_error is None:
                log.warning("%s: %s is not a directory; waiting for it", self.name, self.root)
            self.last_error = f"{self.root}: not a directory"
            return
        if self.last_error is not None:
            log.warning("%s: %s is there again", self.name, self.root)
            self.last_error = None
        now = time.monotonic()
        for path in self._files():
            if path not in self._done and path not in self._watched:
                self._watched[path] = _Watched(first_seen=now)
        for path, item in list(self._watched.items()):
            self._check(path, item, sink)

    def _files(self) -> list[Path]:
        """Regular files matching the pattern, outside ``processed`` directories, sorted."""
        found: list[Path] = []
        if not self.recursive:
            with os.scandir(self.root) as entries:
                found = [
                    Path(e.path)
                    for e in entries
                    if fnmatch.fnmatch(e.name, self.pattern) and e.is_file()
                ]
            return sorted(found)
        for top, dirs, names in os.walk(self.root):
            dirs[:] = [d for d in dirs if d != IGNORED_DIR]
            found += [Path(top, n) for n in fnmatch.filter(names, self.pattern)]
        return sorted(p for p in found if p.is_file())

    def _check(self, path: Path, item: _Watched, sink: Sink) -> None:
        try:
            info = read_scan_info(path)
        except ScanError as exc:
            if not path.exists():  # removed (or renamed away) before it was used: forget it
                del self._watched[path]
                if item.started:
                    log.warning("%s: %s vanished before it finished", self.name, path)
                return
            # Not readable (yet): a writer may still be creating it. Only a file that never
            # becomes readable is an error; one that did once and now fails is retried.
            if not item.started and time.monotonic() - item.first_seen > self.wait:
                self._dead_letter(path, f"not a readable scan after {self.wait:g} s: {exc}")
            return
        if not item.started:
            if not self._hand(path, item, self._event(path, info, ScanState.STARTED), sink):
                return
            item.started = True
        finished = self._event(path, info, ScanState.FINISHED)
        if info.finished and self._hand(path, item, finished, sink):
            del self._watched[path]
            self._done.add(path)

    @staticmethod
    def _event(path: Path, info: ScanInfo, state: ScanState) -> ScanEvent:
        return ScanEvent(
            key=str(path),
            state=state,
            source="file",
            path=path,
            scan_id=info.scan_id,
            beamline=info.beamline,
            visit=info.visit,
            scan_command=info.scan_command,
            shape=info.shape,
        )

    def _hand(self, path: Path, item: _Watched, event: ScanEvent, sink: Sink) -> bool:
        """Offer ``event`` to the sink: True when handled (False: dead-lettered or try later)."""
        try:
            sink.handle_event(event)
        except InputError as exc:  # MessageError included: this file can never be processed
            self._dead_letter(path, " ".join(str(exc).split()) or type(exc).__name__)
            return False
        except Exception as exc:
            item.failures += 1
            text = " ".join(str(exc).split()) or type(exc).__name__
            if item.failures >= MAX_ATTEMPTS:
                self._dead_letter(path, f"{event.state} failed {item.failures} times: {text}")
            else:
                log.warning(
                    "%s: %s event for %s failed (%s), offered again (%d/%d)",
                    self.name,
                    event.state,
                    path,
                    text,
                    item.failures,
                    MAX_ATTEMPTS,
                )
            return False
        item.failures = 0
        return True

    def _dead_letter(self, path: Path, reason: str) -> None:
        """Give up on ``path`` for good: a warning, and a JSON line in ``dead_letters``."""
        self._watched.pop(path, None)
        self._done.add(path)
        log.warning("%s: dead-lettered %s: %s", self.name, path, reason)
        if self.dead_letters is None:
            return
        line = {"time": datetime.now(UTC).isoformat(), "path": str(path), "reason": reason}
        self.dead_letters.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dead_letters, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
