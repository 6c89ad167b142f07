"""Fixtures that start real servers: redis-server and a gstreamer RTSP server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from segstream.pipeline.config import RunConfig, parse_config  # noqa: E402
from segstream.pipeline.redis_server import PrivateRedis, free_port  # noqa: E402

TESTS = Path(__file__).parent
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="session")
def redis_server():
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def redis_client(redis_server):
    return redis_server.client()


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
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def rtsp_server():
    server = RtspServer().start()
    time.sleep(0.2)
    yield server
    server.stop()


@pytest.fixture
def fast_config(redis_url) -> RunConfig:
    """A run config for tests: small network input so the CPU keeps up, no progress output."""
    return parse_config({
        "model": {"input_size": [128, 224], "score_threshold": 0.05},
        "redis": {"url": redis_url},
        "output": {"progress": False},
    })


def segstream_cli(*args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `segstream` console script as a user would."""
    exe = Path(sys.executable).with_name("segstream")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
