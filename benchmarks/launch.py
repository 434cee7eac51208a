"""From a scan's start message to live processing: how long until the first point is processed.

A live XRF scan (6x8 points, 8 x 4096 spectra, 10 points/s) is written by the simulator's
writer in its own process; as soon as its file exists, a GDA RUNNING message is published to
the real RabbitMQ (127.0.0.1:5672). The launcher (in this process, on a 2-worker LocalCluster
that is already up, as in a running service) consumes it. Two figures, median of 3 scans:

- ``launch.message_to_recorded``: message published -> scan, jobs and steps recorded (through
  the LIMS outbox) and the message acknowledged;
- ``launch.message_to_first_point``: message published -> the first processed point of the
  live step reported (its progress feedback).

Baseline: the goal, 1 s ("within a second, live processing begins"). ratio < 1 meets it. The
recipe is the shipped ``xrf-map``. If RabbitMQ does not answer, the rows say so.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pika

from benchmarks.common import Result, local_client
from hpcproc.launch.amqp import DEFAULT_URL, AmqpSource
from hpcproc.launch.launcher import Launcher
from hpcproc.launch.service import serve
from hpcproc.launch.state import LauncherState
from hpcproc.lims.outbox import DurableLims
from hpcproc.recipes.loader import find_recipe

GOAL_S = 1.0
RUNS = 3


class _Feedback:
    """Notes when each scan's first point was processed (from the progress feedback)."""

    def __init__(self) -> None:
        self.first_point: dict[str, float] = {}
        self.jobs: list[str] = []  # each ended step: what it said (to explain a failed run)

    def publish(self, kind: str, message: dict[str, Any]) -> None:
        if kind == "progress" and message["done"] > 0:
            self.first_point.setdefault(message["scan_file"], time.perf_counter())
        elif kind == "step":
            self.jobs.append(f"{message['step']} {message['status']} {message['message']}")

    def close(self) -> None:
        pass


class _TimedLauncher(Launcher):
    """The launcher, noting when each message was done with (recorded, about to be acked)."""

    acked: list[float]

    def handle_message(self, body: bytes, headers: Mapping[str, Any]) -> None:
        super().handle_message(body, headers)
        self.acked.append(time.perf_counter())


def _publish(exchange: str, body: dict[str, Any]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(DEFAULT_URL))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, "topic", durable=True)
        channel.basic_publish(exchange, "i18.scan", json.dumps(body).encode())
    finally:
        connection.close()


def _one_scan(
    tmp: Path, launcher: _TimedLauncher, feedback: _Feedback, exchange: str, number: int
) -> tuple[float, float]:
    log = tmp / f"writer-{number}.log"  # a file, not a pipe: a pipe nobody reads can fill up
    with log.open("w") as err:
        writer = subprocess.Popen(
            [sys.executable, "-m", "hpcproc.nexus.live_writer", str(tmp / "data"), "-q",
             "--no-xrd", "--map", "6x8", "--rate", "10", "--scan-number", str(number)],
            stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    assert writer.stdout is not None
    path = writer.stdout.readline().strip()
    if not path:
        writer.wait(30)
        raise RuntimeError(f"live writer failed: {log.read_text()[-500:]}")
    # Drain the rest of its stdout (its statistics at the end) so it never blocks on it.
    threading.Thread(target=writer.stdout.read, daemon=True).start()
    acked_before = len(launcher.acked)
    t0 = time.perf_counter()
    _publish(exchange, {"scanId": f"i18-{number:06d}", "status": "RUNNING", "filePath": path,
                        "beamline": "i18", "visit": "cm12345-1"})  # fmt: skip
    # Past a step's idle timeout (60 s), so a stalled step has said why before this gives up.
    deadline = time.monotonic() + 75
    while path not in feedback.first_point or len(launcher.acked) == acked_before:
        if time.monotonic() > deadline:
            state = "running" if writer.poll() is None else f"exited {writer.returncode}"
            raise RuntimeError(
                f"launch benchmark: no processed point within 75 s (jobs: {feedback.jobs or 'none'}"
                f"; writer {state}: {' '.join(log.read_text().split())[-300:] or 'no output'})"
            )
        time.sleep(0.005)
    writer.wait(60)
    if not launcher.wait(120):
        raise RuntimeError("launch benchmark: a job did not end within 120 s")
    return launcher.acked[acked_before] - t0, feedback.first_point[path] - t0


def _measure(tmp: Path, runs: int) -> tuple[list[float], list[float]]:
    with local_client(2) as client:
        return _measure_on(tmp, runs, client)


def _measure_on(tmp: Path, runs: int, client: Any) -> tuple[list[float], list[float]]:
    tag = uuid.uuid4().hex[:10]
    queue, exchange = f"bench.{tag}.scans", f"bench.{tag}.gda"
    recipe = find_recipe("xrf-map")
    lims = DurableLims(f"sqlite:///{tmp / 'lims.sqlite'}", tmp / "outbox.sqlite")
    state = LauncherState(tmp / "state.sqlite")
    feedback = _Feedback()
    launcher = _TimedLauncher(
        lims=lims, client=client, state=state, recipes=lambda: [recipe], feedback=feedback
    )
    launcher.acked = []
    source = AmqpSource(DEFAULT_URL, queue=queue, exchange=exchange, dead_letter=queue + ".dead")
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(launcher, [source], stop))
    recorded, first = [], []
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while not source.connected:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"launch benchmark: {source.name} never connected")
            time.sleep(0.05)
        for i in range(runs + 1):  # the first run warms the workers up: not counted
            r, f = _one_scan(tmp, launcher, feedback, exchange, 500 + i)
            if i:
                recorded.append(r)
                first.append(f)
    finally:
        stop.set()
        thread.join(120)
        state.close()
        lims.close()
        connection = pika.BlockingConnection(pika.URLParameters(DEFAULT_URL))
        channel = connection.channel()
        for name in (queue, queue + ".dead"):
            channel.queue_delete(name)
        channel.exchange_delete(exchange)
        connection.close()
    return recorded, first


def run(runs: int = RUNS) -> list[Result]:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError as exc:
        return [
            Result(
                "launch.message_to_first_point",
                0.0,
                "s",
                "goal",
                GOAL_S,
                False,
                note=f"skipped: RabbitMQ not reachable at 127.0.0.1:5672 ({exc})",
            )
        ]
    with tempfile.TemporaryDirectory() as tmp:
        recorded, first = _measure(Path(tmp), runs)
    note = (
        f"median of {runs} live XRF scans (6x8, 10 points/s, xrf-map), RabbitMQ on localhost, "
        f"2-worker LocalCluster already up; each: {', '.join(f'{v:.3f}' for v in first)} s"
    )
    return [
        Result("launch.message_to_recorded", statistics.median(recorded), "s", "goal",
               GOAL_S, False, note="message -> scan, job and steps recorded, message acked"),
        Result("launch.message_to_first_point", statistics.median(first), "s", "goal", GOAL_S,
               False, note=note),
    ]  # fmt: skip
