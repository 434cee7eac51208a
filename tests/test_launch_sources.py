"""Event sources: STOMP (against RabbitMQ's STOMP plugin) and the polling file watch."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import stomp
from launch_helpers import start_writer

from hpcproc.launch.events import MessageError, ScanEvent, ScanState
from hpcproc.launch.file_watch import FileWatch
from hpcproc.launch.source import REASON_HEADER, SOURCE_HEADER
from hpcproc.launch.stomp_source import StompSource
from hpcproc.nexus.simulator import SimulationConfig, simulate_scan

HOST, STOMP_PORT, AMQP_PORT = "127.0.0.1", 61613, 5672
TINY = dict(map_shape=(2, 3), frame_shape=(32, 32), channels=1, bins=16)
TINY_TAGS = ("good", "bad", "flaky")
LIVE_ARGS = ["--map", "2x3", "--frame", "32x32", "--bins", "16", "--channels", "1"]


class RecordingSink:
    """Records what it handled; refuses bodies (or scan directories) named "bad" for good and
    fails the first time for "flaky" ones, as a passing problem would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handled: list[bytes] = []
        self.headers: list[Mapping[str, Any]] = []  # of every delivery, handled or not
        self.calls: Counter[bytes] = Counter()
        self.events: list[ScanEvent] = []
        self.event_calls: Counter[tuple[str, ScanState]] = Counter()

    def _answer(self, body: bytes) -> None:
        if b"bad" in body:
            raise MessageError(f"cannot use {body.decode()}:\nnot a scan message")
        if b"flaky" in body and self.calls[body] == 1:
            raise RuntimeError("database busy")

    def handle_message(self, body: bytes, headers: Mapping[str, Any]) -> None:
        with self.lock:
            self.calls[body] += 1
            self.headers.append(dict(headers))
            self._answer(body)
            self.handled.append(body)

    def handle_event(self, event: ScanEvent) -> None:
        assert event.path is not None
        tag = event.path.parent.name.encode()  # the scan's directory says how to answer
        with self.lock:
            self.calls[tag + b"/" + event.state.encode()] += 1
            self.event_calls[event.key, event.state] += 1
            self._answer(tag + b"/" + event.state.encode())
            self.events.append(event)

    def states(self, path: Path) -> list[ScanState]:
        with self.lock:
            return [e.state for e in self.events if e.key == str(path)]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def running(source: Any, sink: RecordingSink) -> Iterator[threading.Event]:
    """``source.run(sink, stop)`` in a thread; always stopped and joined."""
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(sink, stop), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), f"{source.name} did not stop"


# --- STOMP -----------------------------------------------------------------------------------


def reachable(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def queues() -> Iterator[tuple[str, str]]:
    """A fresh queue and dead-letter queue per test (deleted afterwards when AMQP is there)."""
    if not reachable(STOMP_PORT):
        pytest.skip(f"RabbitMQ STOMP not reachable at {HOST}:{STOMP_PORT}")
    name = f"hpcproc.test.{uuid.uuid4().hex[:10]}"
    yield f"/queue/{name}", f"/queue/{name}.dead"
    if reachable(AMQP_PORT):
        import pika

        with contextlib.suppress(Exception):
            conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, AMQP_PORT))
            channel = conn.channel()
            channel.queue_delete(name)
            channel.queue_delete(f"{name}.dead")
            conn.close()


def connect() -> stomp.Connection12:
    conn = stomp.Connection12([(HOST, STOMP_PORT)], auto_decode=False, vhost="/")
    conn.connect("guest", "guest", wait=True)
    return conn


def publish(destination: str, *bodies: bytes) -> None:
    conn = connect()
    for body in bodies:
        conn.send(destination, body, headers={"persistent": "true", "x-origin": "test"})
    conn.disconnect(receipt="published")  # waits for the receipt: the broker has them all


def drain(destination: str, quiet: float = 1.0) -> list[tuple[bytes, dict[str, str]]]:
    """Every message on ``destination`` (consumed): until none came for ``quiet`` seconds."""
    got: list[tuple[bytes, dict[str, str]]] = []

    class Collect(stomp.ConnectionListener):
        def on_message(self, frame: Any) -> None:
            got.append((frame.body, dict(frame.headers)))

    conn = connect()
    conn.set_listener("collect", Collect())
    conn.subscribe(destination, "drain", ack="auto")
    seen = -1
    while seen != len(got):
        seen = len(got)
        time.sleep(quiet)
    conn.disconnect(receipt="drained")
    return got


def test_stomp_source_acks_dead_letters_and_redelivers(
    queues: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    queue, dead = queues
    publish(queue, b"good 1", b"bad 1", b"flaky 1", b"good 2")
    assert "s3cret" not in StompSource(password="s3cret").name
    source = StompSource(destination=queue, dead_letter=dead)
    assert "guest@127.0.0.1:61613" in source.name and queue in source.name
    sink = RecordingSink()
    with running(source, sink):
        wait_until(lambda: source.connected, 10, "the STOMP connection")
        wait_until(lambda: len(sink.handled) == 3, 15, "three handled messages")
        assert source.connected and source.last_error is None
    assert not source.connected
    # one connection throughout: a protocol error (e.g. acknowledging twice) would make the
    # broker drop it
    assert "unreachable" not in caplog.text and "connected again" not in caplog.text
    assert sorted(sink.handled) == [b"flaky 1", b"good 1", b"good 2"]
    assert sink.calls == {b"good 1": 1, b"good 2": 1, b"bad 1": 1, b"flaky 1": 2}
    again = [h for h in sink.headers if h["redelivered"] == "true"]  # the NACKed flaky message
    assert len(again) == 1 and again[0]["x-origin"] == "test"

    letters = drain(dead)
    assert [body for body, _ in letters] == [b"bad 1"]
    headers = letters[0][1]
    assert headers[REASON_HEADER] == "cannot use bad 1: not a scan message"  # one line
    assert queue in headers[SOURCE_HEADER]
    assert headers["x-origin"] == "test"  # the message's own headers travel with it
    assert drain(queue, quiet=0.5) == []  # everything was acknowledged


def test_stomp_source_prefetches_one(queues: tuple[str, str]) -> None:
    """While the sink works on one message the others stay ready on the broker (prefetch 1)."""
    if not reachable(AMQP_PORT):
        pytest.skip(f"RabbitMQ AMQP not reachable at {HOST}:{AMQP_PORT} (to count the queue)")
    import pika

    queue, dead = queues
    publish(queue, b"one", b"two", b"three")
    gate, inside = threading.Event(), threading.Event()

    class SlowSink(RecordingSink):
        def handle_message(self, body: bytes, headers: Mapping[str, Any]) -> None:
            inside.set()
            gate.wait(10)
            super().handle_message(body, headers)

    sink = SlowSink()
    source = StompSource(destination=queue, dead_letter=dead)
    conn = pika.BlockingConnection(pika.ConnectionParameters(HOST, AMQP_PORT))
    try:
        with running(source, sink):
            assert inside.wait(10), "no message reached the sink"
            ok = conn.channel().queue_declare(queue.removeprefix("/queue/"), passive=True)
            assert ok.method.message_count == 2  # ready: not taken by the busy consumer
            gate.set()
            wait_until(lambda: len(sink.handled) == 3, 10, "all three messages")
        ok = conn.channel().queue_declare(queue.removeprefix("/queue/"), passive=True)
        assert ok.method.message_count == 0
    finally:
        gate.set()
        conn.close()


class Proxy:
    """A TCP relay to the broker that the test can cut, as a network failure or broker
    restart would (without disturbing the shared broker)."""

    def __init__(self, port: int) -> None:
        self.target = (HOST, port)
        self.server = socket.create_server((HOST, 0))
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every relayed connection (new ones are still accepted)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.server.close()
        self.cut()


def test_stomp_source_reconnects_and_gets_unacked_message_again(queues: tuple[str, str]) -> None:
    queue, dead = queues
    proxy = Proxy(STOMP_PORT)

    class CuttingSink(RecordingSink):
        def handle_message(self, body: bytes, headers: Mapping[str, Any]) -> None:
            super().handle_message(body, headers)
            if body == b"cut" and self.calls[body] == 1:
                proxy.cut()  # handled, but the connection is gone before the ack

    source = StompSource(port=proxy.port, destination=queue, dead_letter=dead, backoff=(0.05, 0.2))
    sink = CuttingSink()
    try:
        publish(queue, b"cut")
        with running(source, sink):
            wait_until(lambda: sink.calls[b"cut"] == 2, 15, "the unacknowledged message again")
            assert proxy.accepted >= 2
            wait_until(lambda: source.connected, 10, "the new connection")
            proxy.cut()  # and once more while idle
            wait_until(lambda: proxy.accepted >= 3 and source.connected, 10, "a reconnect")
            publish(queue, b"after")
            wait_until(lambda: b"after" in sink.handled, 10, "a message after reconnecting")
        assert source.last_error is None
        assert sink.handled == [b"cut", b"cut", b"after"]  # at least once: the sink is idempotent
        assert drain(queue, quiet=0.5) == []
    finally:
        proxy.close()


def test_stomp_source_without_broker_keeps_trying_and_stops() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    source = StompSource(port=port, backoff=(0.05, 0.2))
    sink = RecordingSink()
    started = time.monotonic()
    with running(source, sink):
        wait_until(lambda: source.last_error is not None, 10, "a connection error")
        assert not source.connected
        time.sleep(0.5)  # a few retries
    assert time.monotonic() - started < 10
    assert sink.calls == {}


# --- file watch --------------------------------------------------------------------------------


def test_file_watch_started_finished_dead_letters_and_ignores(tmp_path: Path) -> None:
    root = tmp_path / "data"
    old = simulate_scan(root / "old", SimulationConfig(**TINY)).path  # there before the watch
    simulate_scan(root / "sub" / "processed", SimulationConfig(**TINY))  # results: ignored
    garbage = root / "junk.nxs"
    garbage.write_bytes(b"this is not HDF5\n" * 10)
    dead = tmp_path / "dead.jsonl"
    watch = FileWatch(root, interval=0.1, wait=1.0, dead_letters=dead)
    assert watch.name == f"watch {root}/*.nxs" and watch.connected
    sink = RecordingSink()
    with running(watch, sink):
        wait_until(lambda: len(sink.states(old)) == 2, 15, "the existing scan's events")
        proc, live = start_writer(root / "live", *LIVE_ARGS, "--rate", "3")
        try:
            wait_until(lambda: sink.states(live) == [ScanState.STARTED], 15, "live STARTED")
            wait_until(lambda: len(sink.states(live)) == 2, 30, "live FINISHED")
            assert proc.wait(30) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wait_until(lambda: dead.exists(), 5, "the garbage file's dead letter")
        time.sleep(0.5)  # several more polls: nothing is handed twice
    assert sink.states(old) == [ScanState.STARTED, ScanState.FINISHED]
    assert sink.states(live) == [ScanState.STARTED, ScanState.FINISHED]
    assert set(sink.event_calls.values()) == {1}
    assert {e.key for e in sink.events} == {str(old), str(live)}  # not processed/, not junk
    first = sink.events[0]
    assert (first.source, first.path, first.scan_id, first.beamline) == (
        "file",
        old,
        "i18-000001",
        "i18",
    )
    assert first.visit == "cm12345-1" and first.shape == (2, 3) and first.scan_command

    lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(lines) == 1 and set(lines[0]) == {"time", "path", "reason"}
    assert lines[0]["path"] == str(garbage)
    assert "not a readable scan after 1 s" in lines[0]["reason"]


def test_file_watch_sink_answers_and_existing_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    skipped = simulate_scan(root / "before", SimulationConfig(**TINY)).path
    staging = tmp_path / "staging"
    scans = {tag: simulate_scan(staging / tag, SimulationConfig(**TINY)).path for tag in TINY_TAGS}
    dead = tmp_path / "dead" / "letters.jsonl"
    watch = FileWatch(root, interval=0.1, existing=False, dead_letters=dead)
    sink = RecordingSink()
    with running(watch, sink):
        time.sleep(0.3)  # the watch has taken note of what is already there
        for tag in TINY_TAGS:  # appear whole, as a finished scan copied in would
            shutil.move(staging / tag, root / tag)
        good, flaky = (root / t / scans[t].name for t in ("good", "flaky"))
        wait_until(lambda: len(sink.states(good)) == 2, 15, "the good scan's events")
        wait_until(lambda: len(sink.states(flaky)) == 2, 15, "the flaky scan, retried")
        wait_until(lambda: dead.exists(), 5, "the bad scan's dead letter")
        time.sleep(0.5)
    assert sink.states(skipped) == []  # existing=False
    # each event failed once (a first call per body fails), was offered again and then handled
    assert sink.calls[b"flaky/started"] == 2 and sink.calls[b"flaky/finished"] == 2
    assert sink.calls[b"good/started"] == 1 and sink.calls[b"good/finished"] == 1
    assert sink.calls[b"bad/started"] == 1 and b"bad/finished" not in sink.calls
    [letter] = [json.loads(line) for line in dead.read_text().splitlines()]
    assert letter["path"] == str(root / "bad" / scans["bad"].name)
    assert letter["reason"] == "cannot use bad/started: not a scan message"

    gone = FileWatch(tmp_path / "nowhere")
    assert not gone.connected
    gone.poll(sink)
    assert gone.last_error and "nowhere" in gone.last_error
