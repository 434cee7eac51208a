"""Scan messages from an AMQP 0-9-1 broker (RabbitMQ) through pika: the facility default.

The launcher consumes a durable queue (``hpcproc.scans``), bound to a topic exchange that
acquisition publishes to (``gda.scans``, every routing key by default). One message at a time
is in flight (prefetch 1) and acknowledged only once the sink has recorded its effects; a
message the sink cannot use goes to the durable dead-letter queue (``hpcproc.scans.dead``)
with the reason in the ``x-hpcproc-reason`` header, published with confirms before the
original is acknowledged. When the broker goes away the source reconnects (back-off 0.5 s
doubling to 10 s); unacknowledged messages are delivered again by the broker, which the
launcher's idempotence makes harmless.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

import pika
from pika.exceptions import AMQPChannelError, AMQPConnectionError, AMQPError

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

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
QUEUE = "hpcproc.scans"
EXCHANGE = "gda.scans"
DEAD_LETTER = "hpcproc.scans.dead"


def safe_url(url: str) -> str:
    """The URL without its password (for logs and errors)."""
    params = pika.URLParameters(url)
    user = params.credentials.username if params.credentials else ""
    return f"amqp://{user}@{params.host}:{params.port}{'/' + params.virtual_host.lstrip('/')}"


class AmqpSource:
    """Consumes scan messages from RabbitMQ (see the module doc)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        queue: str = QUEUE,
        exchange: str | None = EXCHANGE,
        binding_keys: tuple[str, ...] = ("#",),
        dead_letter: str = DEAD_LETTER,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.url = url
        self.name = f"amqp {safe_url(url)} queue {queue}"
        self.queue = queue
        self.exchange = exchange
        self.binding_keys = binding_keys
        self.dead_letter = dead_letter
        self.backoff = backoff
        self.last_error: str | None = None
        self._connected = threading.Event()
        self._attempts = Attempts()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def declare(self, channel: Any) -> None:
        """The queues (and exchange binding) this source uses: durable, idempotent."""
        channel.queue_declare(self.queue, durable=True)
        channel.queue_declare(self.dead_letter, durable=True)
        if self.exchange:
            channel.exchange_declare(self.exchange, "topic", durable=True)
            for key in self.binding_keys:
                channel.queue_bind(self.queue, self.exchange, routing_key=key)

    def run(self, sink: Sink, stop: threading.Event) -> None:
        delay = self.backoff[0]
        while not stop.is_set():
            connection = None
            try:
                connection = pika.BlockingConnection(pika.URLParameters(self.url))
                channel = connection.channel()
                channel.confirm_delivery()  # dead letters are confirmed before the ack
                self.declare(channel)
                channel.basic_qos(prefetch_count=1)
                self._connected.set()
                if self.last_error:
                    log.warning("%s: connected again", self.name)
                self.last_error = None
                delay = self.backoff[0]
                for method, props, body in channel.consume(self.queue, inactivity_timeout=0.25):
                    if stop.is_set():
                        break
                    if method is not None:
                        self._deliver(channel, method, props, body, sink, stop)
            except (AMQPConnectionError, AMQPChannelError, AMQPError, OSError) as exc:
                text = " ".join(str(exc).split()) or type(exc).__name__
                if self.last_error is None:
                    log.warning("%s: broker unreachable (%s); retrying", self.name, text)
                self.last_error = text
                self._connected.clear()
                stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
            finally:
                self._connected.clear()
                if connection is not None and connection.is_open:
                    with contextlib.suppress(AMQPError):
                        connection.close()  # unacknowledged messages go back to the queue

    def _deliver(
        self, channel: Any, method: Any, props: Any, body: bytes, sink: Sink, stop: threading.Event
    ) -> None:
        headers: Mapping[str, Any] = props.headers or {}
        try:
            self._handle(channel.connection, sink, body, headers)
        except MessageError as exc:
            self._dead_letter(channel, method, props, body, str(exc))  # acknowledges it
            return
        except Exception as exc:
            n = self._attempts.failed(body)
            text = " ".join(str(exc).split()) or type(exc).__name__
            if n >= MAX_ATTEMPTS:
                self._dead_letter(channel, method, props, body, f"failed {n} times: {text}")
                return
            log.warning(
                "%s: message failed (%s), offered again (%d/%d)", self.name, text, n, MAX_ATTEMPTS
            )
            stop.wait(RETRY_PAUSE)
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        self._attempts.forget(body)
        channel.basic_ack(method.delivery_tag)

    @staticmethod
    def _handle(connection: Any, sink: Sink, body: bytes, headers: Mapping[str, Any]) -> None:
        """``sink.handle_message`` in a thread of its own, while this one keeps the connection
        alive: waiting for a scan file can outlast the broker's heartbeat timeout."""
        outcome: list[BaseException | None] = []

        def work() -> None:
            try:
                sink.handle_message(body, headers)
                outcome.append(None)
            except BaseException as exc:  # handed back to the consumer thread
                outcome.append(exc)

        worker = threading.Thread(target=work, name="amqp-message", daemon=True)
        worker.start()
        while worker.is_alive():
            connection.sleep(0.05)  # pika's own wait: services heartbeats meanwhile
        if outcome and outcome[0] is not None:
            raise outcome[0]

    def _dead_letter(self, channel: Any, method: Any, props: Any, body: bytes, reason: str) -> None:
        log.warning("%s: dead-lettered a message: %s", self.name, reason)
        headers = dict(props.headers or {})
        headers[REASON_HEADER] = reason
        headers[SOURCE_HEADER] = f"{self.queue} (routing key {method.routing_key!r})"
        channel.basic_publish(
            "",
            self.dead_letter,
            body,
            pika.BasicProperties(
                headers=headers,
                content_type=props.content_type,
                delivery_mode=pika.DeliveryMode.Persistent,
            ),
        )
        self._attempts.forget(body)
        channel.basic_ack(method.delivery_tag)
