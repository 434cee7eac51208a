"""`hpcproc demo --serve` prints the URL of the results page, and the page is there."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def test_demo_serve_prints_the_results_page(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HPCPROC_HOME": str(tmp_path / "home")}
    env.pop("HPCPROC_LIMS_URL", None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "hpcproc.cli", "demo", "--map", "2x3", "--frame", "64x64",
         "--serve", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if "(Ctrl-C stops the server)" in line:
                break
        text = "".join(lines)
        page = re.search(r"Results page: (http://127\.0\.0\.1:\d+/jobs/\d+)", text)
        token = re.search(r"with the token (\S+)", text)
        assert page and token, text + demo.stderr.read()
        request = urllib.request.Request(
            page.group(1), headers={"Cookie": f"hpcproc_token={token.group(1)}"}
        )
        for _ in range(100):  # the server starts after the URL is printed
            try:
                with urllib.request.urlopen(request, timeout=5) as reply:
                    html = reply.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the results page never answered")
        assert reply.status == 200 and "xrd-map" in html and "success" in html
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
