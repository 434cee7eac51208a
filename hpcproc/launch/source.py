"""What every event source hands its messages to, and how it treats the answer.

A source calls ``sink.handle_message(body, headers)`` for each broker message (or
``sink.handle_event(event)`` for events it makes itself, as the file watch does):

- it returns: the message's effects are recorded (durably): acknowledge it;
- it raises :class:`~hpcproc.launch.events.MessageError`: the message can never be processed:
  put it on the dead-letter queue with the reason, then acknowledge it;
- it raises anything else: a passing problem: do not acknowledge; the message is delivered
  again after a pause, and dead-lettered after ``MAX_ATTEMPTS`` tries.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

from hpcproc.launch.events import ScanEvent

RETRY_PAUSE = 1.0  # s before a message that failed for a passing reason is offered again
MAX_ATTEMPTS = 5  # deliveries of one message that fail for a passing reason before dead-letter
REASON_HEADER = "x-hpcproc-reason"  # dead letters carry the reason here
SOURCE_HEADER = "x-hpcproc-source"  # and where the message came from


class Sink(Protocol):
    def handle_message(self, body: bytes, headers: Mapping[str, Any]) -> None: ...

    def handle_event(self, event: ScanEvent) -> None: ...


class Source(Protocol):
    name: str

    @property
    def connected(self) -> bool: ...

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, reconnecting when the broker goes away."""


class Attempts:
    """How often each message body failed for a passing reason (a bounded memory)."""

    def __init__(self, keep: int = 10_000) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def failed(self, body: bytes) -> int:
        """Count one more failure of ``body``; the number of failures so far."""
        key = hashlib.sha256(body).hexdigest()
        with self._lock:
            n = self._counts.pop(key, 0) + 1
            self._counts[key] = n
            while len(self._counts) > self._keep:
                self._counts.popitem(last=False)
            return n

    def forget(self, body: bytes) -> None:
        with self._lock:
            self._counts.pop(hashlib.sha256(body).hexdigest(), None)
