"""Fixtures the security tests share."""

from __future__ import annotations

import pytest

from redis_server import PrivateRedis


@pytest.fixture(scope="module")
def redis():
    """A Redis of the module's own (its services and their canary keys stay apart from other modules')."""
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()
