"""Scan messages over STOMP (stomp.py, protocol 1.2), for facilities whose acquisition speaks
STOMP rather than AMQP. Written against RabbitMQ's STOMP plugin: ``prefetch-count`` and NACK
meaning "requeue" are RabbitMQ's (ActiveMQ would need ``activemq.prefetchSize`` and its own
redelivery policy).

It behaves as :mod:`.amqp` does: one message in flight (``ack: client-individual`` with RabbitMQ's
``prefetch-count: 1``), acknowledged only once the sink has recorded its effects; a message the
sink cannot use is sent, persistent, to the dead-letter destination with the reason in the
``x-hpcproc-reason`` header, and only acknowledged once the broker's receipt for that send has
arrived (STOMP's stand-in for publisher confirms). A passing failure is NACKed after a pause, so
the broker offers the message again, and dead-lettered after ``MAX_ATTEMPTS``.

stomp.py calls its listener from its own receiver thread; handling a message there would block
heartbeats and receipts (a dead letter waiting for its receipt would wait forever), so the
listener only queues frames and :meth:`StompSource.run` handles them in the caller's thread.
Heartbeats (4 s each way) notice a vanished broker; the source then reconnects with back-off, and
the broker redelivers whatever was unacknowledged, which the launcher's idempotence makes harmless.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import stomp
from stomp.exception import StompException

from hpcproc.launch.events import MessageError
from hpcproc.launch.source import (
    MAX_ATTEMPTS,
    REASON_HEADER,
    RETRY_PAUSE,
    SOURCE_HEADER,
    Attempts,
    Sink,
)

log = logging.getLogger(__name__)

DESTINATION = "/queue/hpcproc.scans"
DEAD_LETTER = "/queue/hpcproc.scans.dead"
HEARTBEATS = (4000, 4000)  # ms: send, expect
RECEIPT_TIMEOUT = 10.0  # s to wait for the broker to confirm a dead letter
CONNECT_TIMEOUT = 5.0  # s for the TCP connection
# Frame headers that describe one delivery rather than the message: not copied to a dead letter.
# RabbitMQ also keeps a SEND's "receipt" header on the stored message.
_DELIVERY_HEADERS = frozenset(
    {
        "message-id",
        "subscription",
        "ack",
        "destination",
        "content-length",
        "redelivered",
        "receipt",
        "transaction",
    }
)


def one_line(text: str, limit: int = 1000) -> str:
    """Header values cannot hold line breaks (stomp.py would escape them; keep them readable)."""
    return " ".join(text.split())[:limit]


class _ConnectionLost(Exception):
    """The broker went away (or sent ERROR) while the source was consuming."""


class _Gone:
    """Queued by the listener when the connection ends: wakes ``run`` up."""


_GONE = _Gone()


class _Listener(stomp.ConnectionListener):
    """Runs in stomp.py's receiver thread: hands frames over, never handles them."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.error: str | None = None
        self.gone = threading.Event()
        self._receipts: set[str] = set()
        self._changed = threading.Condition()

    def on_message(self, frame: Any) -> None:
        self.inbox.put(frame)

    def on_receipt(self, frame: Any) -> None:
        with self._changed:
            self._receipts.add(frame.headers.get("receipt-id", ""))
            self._changed.notify_all()

    def on_error(self, frame: Any) -> None:
        body = frame.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        self.error = one_line(f"{frame.headers.get('message', 'ERROR')}: {body or ''}", 300)

    def on_disconnected(self) -> None:
        self.gone.set()
        self.inbox.put(_GONE)
        with self._changed:
            self._changed.notify_all()

    def wait_receipt(self, receipt: str, timeout: float) -> bool:
        """True once the broker sent ``receipt``; False on timeout or a lost connection."""
        with self._changed:
            self._changed.wait_for(lambda: receipt in self._receipts or self.gone.is_set(), timeout)
            if receipt in self._receipts:
                self._receipts.discard(receipt)
                return True
            return False


class StompSource:
    """Consumes scan messages from a STOMP broker (see the module doc)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 61613,
        *,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        destination: str = DESTINATION,
        dead_letter: str = DEAD_LETTER,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self.vhost = vhost
        self.destination = destination
        self.dead_letter = dead_letter
        self.backoff = backoff
        self.name = f"stomp {user}@{host}:{port} vhost {vhost} destination {destination}"
        self.last_error: str | None = None
        self._connected = threading.Event()
        self._attempts = Attempts()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _connect(self) -> tuple[Any, _Listener]:
        """A connected, subscribed connection; raises StompException/OSError if the broker is
        not there (stomp.py's own retries are off: :meth:`run` backs off instead)."""
        conn = stomp.Connection12(
            [(self.host, self.port)],
            heartbeats=HEARTBEATS,
            vhost=self.vhost,
            auto_decode=False,  # bodies stay bytes, as the sink expects
            reconnect_attempts_max=1,
            timeout=CONNECT_TIMEOUT,
        )
        listener = _Listener()
        conn.set_listener("hpcproc", listener)
        try:
            conn.connect(self.user, self._password, wait=True)
        except (StompException, OSError) as exc:
            self._close(conn, listener)
            raise _ConnectionLost(listener.error or str(exc) or type(exc).__name__) from exc
        conn.subscribe(
            self.destination,
            f"hpcproc-{uuid.uuid4().hex[:12]}",
            ack="client-individual",
            headers={"prefetch-count": "1"},  # RabbitMQ: one unacknowledged message at a time
        )
        return conn, listener

    def run(self, sink: Sink, stop: threading.Event) -> None:
        delay = self.backoff[0]
        while not stop.is_set():
            conn: Any = None
            listener: _Listener | None = None
            failure: str | None = None
            try:
                conn, listener = self._connect()
                self._connected.set()
                if self.last_error:
                    log.warning("%s: connected again", self.name)
                self.last_error = None
                delay = self.backoff[0]
                while not stop.is_set():
                    try:
                        item = listener.inbox.get(timeout=0.25)
                    except queue.Empty:
                        continue
                    if item is _GONE:
                        raise _ConnectionLost(listener.error or "connection lost")
                    self._deliver(conn, listener, item, sink, stop)
            except (_ConnectionLost, StompException, OSError) as exc:
                failure = one_line(str(exc)) or type(exc).__name__
            finally:
                self._connected.clear()
                if conn is not None and listener is not None:
                    self._close(conn, listener)  # unacknowledged messages go back to the queue
            if failure is not None:  # closed first, then back off
                if self.last_error is None:
                    log.warning("%s: broker unreachable (%s); retrying", self.name, failure)
                self.last_error = failure
                stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])

    @staticmethod
    def _close(conn: Any, listener: _Listener) -> None:
        """DISCONNECT with a receipt (the broker has every earlier ACK by then), else drop it."""
        with contextlib.suppress(StompException, OSError):
            if conn.is_connected():
                conn.disconnect()
                listener.gone.wait(5.0)
        if not listener.gone.is_set():
            with contextlib.suppress(Exception):
                conn.transport.disconnect_socket()

    def _deliver(
        self, conn: Any, listener: _Listener, frame: Any, sink: Sink, stop: threading.Event
    ) -> None:
        body: bytes = frame.body if isinstance(frame.body, bytes) else frame.body.encode()
        headers: Mapping[str, Any] = frame.headers
        ack_id = headers["ack"]  # STOMP 1.2: ACK/NACK name the message by its "ack" header
        try:
            sink.handle_message(body, headers)
        except MessageError as exc:
            self._dead_letter(conn, listener, frame, body, str(exc))  # acknowledges it
            return
        except Exception as exc:
            n = self._attempts.failed(body)
            text = one_line(str(exc)) or type(exc).__name__
            if n >= MAX_ATTEMPTS:
                self._dead_letter(conn, listener, frame, body, f"failed {n} times: {text}")
                return
            log.warning(
                "%s: message failed (%s), offered again (%d/%d)", self.name, text, n, MAX_ATTEMPTS
            )
            stop.wait(RETRY_PAUSE)
            conn.nack(ack_id)  # RabbitMQ requeues by default
            return
        self._attempts.forget(body)
        conn.ack(ack_id)

    def _dead_letter(
        self, conn: Any, listener: _Listener, frame: Any, body: bytes, reason: str
    ) -> None:
        reason = one_line(reason)
        log.warning("%s: dead-lettered a message: %s", self.name, reason)
        headers = {k: v for k, v in frame.headers.items() if k not in _DELIVERY_HEADERS}
        headers[REASON_HEADER] = reason
        headers[SOURCE_HEADER] = one_line(
            f"{self.destination} (destination {frame.headers.get('destination')!r})"
        )
        headers["persistent"] = "true"
        receipt = f"dead-{uuid.uuid4().hex}"
        headers["receipt"] = receipt
        conn.send(self.dead_letter, body, headers=headers)
        if not listener.wait_receipt(receipt, RECEIPT_TIMEOUT):
            # Not known delivered: leave the original unacknowledged; it comes back after the
            # reconnect (and may then be dead-lettered twice, never lost).
            raise _ConnectionLost(f"no receipt for the dead letter within {RECEIPT_TIMEOUT:g} s")
        self._attempts.forget(body)
        conn.ack(frame.headers["ack"])
