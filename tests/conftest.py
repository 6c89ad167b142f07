"""Fixtures that start real servers: redis-server and a gstreamer RTSP server."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from segstream.pipeline.config import RunConfig, parse_config  # noqa: E402
from redis_server import PrivateRedis  # noqa: E402
from servers import RtspServer  # noqa: E402


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
        # The torch engine these tests were written for; OpenVINO (the CPU default) has its own tests.
        "engine": {"kind": "torch"},
        "redis": {"url": redis_url},
        "output": {"progress": False},
    })
