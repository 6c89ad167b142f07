"""Real servers and the real console script, for the tests (helpers shared by test modules)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from redis_server import free_port, stop_process

TESTS = Path(__file__).parent
SYSTEM_PYTHON = "/usr/bin/python3"


class RtspServer:
    """tests/rtsp_server.py run by the system python (python3-gi lives there, not in the venv)."""

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30, port: int | None = None) -> None:
        self.port = port or free_port()
        self.args = ["--width", str(width), "--height", str(height), "--fps", str(fps)]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> "RtspServer":
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(TESTS / "rtsp_server.py"), "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line!r}")
        return self

    def stop(self) -> None:
        stop_process(self.process)


def segstream_cli(*args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `segstream` console script as a user would."""
    exe = Path(sys.executable).with_name("segstream")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def wait_for(check: Callable[[], Any], timeout: float, what: str | Callable[[], str] = "condition",
             every: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy (returned), at most `timeout` seconds; then an
    AssertionError naming `what` (a text, or a function giving one at the time of failure)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(every)


def http_status(port: int, path: str) -> int | None:
    """The status of GET http://127.0.0.1:PORT/PATH; None while nothing answers there."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def json_request(url: str, method: str = "GET", body: Any = None, token: str | None = None,
                 timeout: float = 30) -> tuple[int, Any]:
    """(status, payload) of one HTTP request with an optional JSON body and bearer token: payload is
    the parsed JSON where the answer says JSON, else its text (error answers included)."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload, kind = response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        status, payload, kind = err.code, err.read(), err.headers.get("content-type", "")
    return status, (json.loads(payload) if "json" in kind else payload.decode(errors="replace"))
