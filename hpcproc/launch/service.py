"""The launcher as a long-running service: sources in threads, a health check, clean shutdown.

``serve`` starts one thread per event source, resumes what a previous launcher left unfinished,
and runs until ``stop`` is set (the CLI sets it on SIGTERM or SIGINT). Then the sources stop
consuming (messages not yet acknowledged go back to the broker), running jobs are let finish
(``drain`` s at most; what is still running is resumed by the next launcher), and it returns.

Health: ``GET /health`` on ``health_port`` answers JSON — each source and whether it is
connected, job counts by state, jobs running, messages handled, the LIMS outbox backlog — with
HTTP 200 when every source is connected, else 503 (for a process supervisor or load balancer).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hpcproc.launch.launcher import Launcher
from hpcproc.launch.source import Source

log = logging.getLogger(__name__)


def health(launcher: Launcher, sources: Sequence[Source]) -> dict[str, Any]:
    connected = {s.name: s.connected for s in sources}
    report: dict[str, Any] = {
        "status": "ok" if all(connected.values()) else "degraded",
        "sources": connected,
        "jobs": launcher.state.counts(),
        "running": launcher.running(),
        "messages": launcher.messages,
        "last_message": launcher.last_message,
    }
    pending = getattr(launcher.lims, "pending", None)
    if callable(pending):
        report["lims_outbox_pending"] = pending()
        report["lims_last_error"] = getattr(launcher.lims, "last_error", None)
    return report


def _health_server(launcher: Launcher, sources: Sequence[Source], port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/health":
                self.send_error(404, "only /health here")
                return
            report = health(launcher, sources)
            body = json.dumps(report).encode()
            self.send_response(200 if report["status"] == "ok" else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:  # probes every few seconds: keep quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def serve(
    launcher: Launcher,
    sources: Sequence[Source],
    stop: threading.Event,
    *,
    health_port: int | None = None,
    drain: float | None = None,
    ready: threading.Event | None = None,
) -> bool:
    """Run until ``stop``; True if every job had finished when it returned."""
    server = _health_server(launcher, sources, health_port) if health_port is not None else None
    if server is not None:
        log.info("health check on http://127.0.0.1:%d/health", server.server_address[1])
    threads = [
        threading.Thread(target=s.run, args=(launcher, stop), name=f"source: {s.name}")
        for s in sources
    ]
    try:
        resumed = launcher.resume()
        if resumed:
            log.warning("resumed %d job(s) a stopped launcher left unfinished", len(resumed))
        for t in threads:
            t.start()
        log.info("launcher listening: %s", "; ".join(s.name for s in sources))
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            pass
        log.info("launcher stopping: no new messages; letting running jobs finish")
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join()
        finished = launcher.shutdown(drain)
        if server is not None:
            server.shutdown()
            server.server_close()
    return finished
