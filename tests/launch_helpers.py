"""Helpers for the launcher tests: RabbitMQ reachability, unique names, publishing, reading."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.exceptions import AMQPError

from hpcproc.jobs import JobOutcome

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
RECIPES = Path(__file__).parent / "data" / "recipes"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_rabbitmq() -> None:
    if not port_open(5672):
        pytest.skip(
            "RabbitMQ is not reachable at 127.0.0.1:5672 (start: rabbitmq-server -detached)"
        )


def names() -> dict[str, str]:
    """A queue, exchange and dead-letter queue of this test only."""
    tag = uuid.uuid4().hex[:10]
    return {
        "queue": f"test.{tag}.scans",
        "exchange": f"test.{tag}.gda",
        "dead_letter": f"test.{tag}.dead",
        "feedback": f"test.{tag}.feedback",
    }


def publish(exchange: str, key: str, body: Any, retry_for: float = 60.0) -> None:
    """Publish one persistent message (as acquisition does), retrying while the broker is down."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    deadline = time.monotonic() + retry_for
    while True:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                channel.exchange_declare(exchange, "topic", durable=True)
                channel.basic_publish(
                    exchange,
                    key,
                    data,
                    pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
                    mandatory=True,
                )
            finally:
                connection.close()
            return
        except (AMQPError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def declare(queue: str, exchange: str | None = None, key: str = "#") -> None:
    """A durable queue, bound to a topic exchange (so messages published before the launcher
    starts wait for it)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        if exchange:
            channel.exchange_declare(exchange, "topic", durable=True)
            channel.queue_bind(queue, exchange, routing_key=key)
    finally:
        connection.close()


def drain(queue: str) -> list[tuple[dict[str, Any], bytes]]:
    """Every message now in ``queue`` (headers, body), removed from it."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    out = []
    try:
        channel = connection.channel()
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((dict(props.headers or {}), body))
    finally:
        connection.close()


def delete(*queues_or_exchanges: str) -> None:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except AMQPError:
        return
    try:
        channel = connection.channel()
        for name in queues_or_exchanges:
            channel.queue_delete(name)
            channel.exchange_delete(name)
    except AMQPError:
        pass
    finally:
        if connection.is_open:
            connection.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def start_writer(out: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """The detector's file writer in its own process; returns once its file is in SWMR mode."""
    writer = subprocess.Popen(
        [sys.executable, "-m", "hpcproc.nexus.live_writer", str(out), "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = writer.stdout.readline().strip() if writer.stdout else ""
    assert line, writer.stderr.read() if writer.stderr else "no output"
    return writer, Path(line)


def gda(scan: str, status: str, path: Path | None = None, **more: Any) -> dict[str, Any]:
    message = {"scanId": scan, "status": status, "beamline": "i18", "visit": "cm12345-1", **more}
    if path is not None:
        message["filePath"] = str(path)
    return message


class Background:
    """A job run in a thread of this process, as the launcher runs them."""

    def __init__(self, target: Callable[[], JobOutcome]) -> None:
        self.outcome: JobOutcome | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.outcome = target()
            except BaseException as exc:  # reported by the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float) -> JobOutcome:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the job did not stop within {timeout:g} s"
        assert self.error is None, self.error
        assert self.outcome is not None
        return self.outcome
