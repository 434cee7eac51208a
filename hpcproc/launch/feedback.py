"""Progress and results published back to acquisition, so a scan can be steered by them.

Messages are JSON objects with a ``type``: ``progress`` (points processed by a step so far, at
most every ``PROGRESS_EVERY`` s per step, and always the last), ``step`` (a step ended: status
and message) and ``job`` (a job ended: status, processed file, every step's status). Each also
names the scan (``scan_key``, ``scan_id``, ``scan_file``, ``beamline``, ``visit``) and the job
(``job_id``, ``recipe``).

:class:`AmqpFeedback` publishes them on a topic exchange (``hpcproc.feedback``) with routing key
``<beamline>.<scan id>.<type>``, so a client can follow one beamline (``i18.#``), one scan, or
every finished job (``*.*.job``). Publishing never holds processing up: messages go through a
bounded queue to one publisher thread (pika connections are not thread-safe), which reconnects
after a broker restart; while the broker is away they are dropped and counted (feedback is for
steering now; the LIMS is the record).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from typing import Any, Protocol

import pika
from pika.exceptions import AMQPError

from hpcproc.launch.amqp import DEFAULT_URL, safe_url

log = logging.getLogger(__name__)

EXCHANGE = "hpcproc.feedback"
PROGRESS_EVERY = 0.5  # s between progress messages of one step


class Feedback(Protocol):
    def publish(self, kind: str, message: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def routing_key(kind: str, message: dict[str, Any]) -> str:
    def word(value: Any) -> str:
        return str(value or "unknown").replace(".", "_").replace(" ", "_") or "unknown"

    return f"{word(message.get('beamline'))}.{word(message.get('scan_id'))}.{word(kind)}"


class LogFeedback:
    """Feedback to the log only (no broker configured)."""

    def publish(self, kind: str, message: dict[str, Any]) -> None:
        level = logging.DEBUG if kind == "progress" else logging.INFO
        log.log(level, "feedback %s: %s", routing_key(kind, message), json.dumps(message))

    def close(self) -> None:
        pass


class AmqpFeedback:
    """Publishes feedback on a RabbitMQ topic exchange (see the module doc)."""

    def __init__(self, url: str = DEFAULT_URL, exchange: str = EXCHANGE, size: int = 10_000):
        self.url = url
        self.exchange = exchange
        self.published = 0
        self.dropped = 0
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(size)
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)
        self._thread.start()

    def publish(self, kind: str, message: dict[str, Any]) -> None:
        body = json.dumps({"type": kind, "time": time.time(), **message}, default=str)
        try:
            self._queue.put_nowait((routing_key(kind, message), body.encode()))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued (``timeout`` s at most), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        connection = channel = None
        item: tuple[str, bytes] | None = None
        while True:
            if item is None:
                item = self._queue.get()
                if item is None:
                    break
            try:
                if channel is None or not channel.is_open:
                    connection = pika.BlockingConnection(pika.URLParameters(self.url))
                    channel = connection.channel()
                    channel.exchange_declare(self.exchange, "topic", durable=True)
                key, body = item
                channel.basic_publish(
                    self.exchange,
                    key,
                    body,
                    pika.BasicProperties(content_type="application/json"),
                )
                self.published += 1
                item = None
            except (AMQPError, OSError) as exc:
                log.debug("feedback to %s failed: %s", safe_url(self.url), exc)
                self.dropped += 1
                item = None  # dropped: feedback is for now, not for later
                channel = None
                time.sleep(0.5)
        if connection is not None and connection.is_open:
            with contextlib.suppress(AMQPError):
                connection.close()
