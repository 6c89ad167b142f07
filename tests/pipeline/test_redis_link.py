"""The Redis link: one way to connect and one retry policy, for the producer, the consumer, the service and the fleet."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis_server import PrivateRedis, free_port

from segstream.pipeline.wire.redis_link import RedisLinkError, RedisUnreachable, RetryPolicy, wait_for_redis

QUICK = RetryPolicy(initial=0.05, cap=0.2)


def test_a_process_started_before_its_redis_connects_once_redis_comes_up():
    server = PrivateRedis(port=free_port())
    failures: list[BaseException] = []
    starter = threading.Timer(1.0, server.start)
    starter.start()
    try:
        began = time.monotonic()
        client = wait_for_redis(server.url, QUICK, on_failure=failures.append, timeout=0.5)
        assert client.ping() and time.monotonic() - began >= 0.9
        assert failures and all(isinstance(f, RedisUnreachable) for f in failures)
        assert "cannot reach Redis at redis://127.0.0.1" in str(failures[0])
    finally:
        starter.join()
        server.stop()


def test_refused_credentials_are_an_error_at_once_not_a_wait():
    with PrivateRedis(["--requirepass", "right"], password="wrong") as url:
        began = time.monotonic()
        with pytest.raises(RedisLinkError, match="refused the credentials") as refused:
            wait_for_redis(url, RetryPolicy(initial=5, cap=5))
        assert time.monotonic() - began < 2 and not isinstance(refused.value, RedisUnreachable)
        assert "wrong" not in str(refused.value)


def test_a_stop_request_ends_the_wait_for_an_absent_redis_at_once():
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    began = time.monotonic()
    with pytest.raises(RedisUnreachable):
        wait_for_redis(f"redis://127.0.0.1:{free_port()}/0", RetryPolicy(initial=30, cap=30), wait=stop.wait,
                       timeout=0.2)
    assert time.monotonic() - began < 3, "the 30 s backoff was cut short by the stop request"


def test_a_running_writer_may_wait_out_a_refusal_the_others_get_it_at_once():
    server = PrivateRedis(["--requirepass", "right"], password="right")
    with server as url:
        client = wait_for_redis(url, QUICK)
        admin = server.client()
        admin.ping()  # authenticated now: it stays so when the password changes
        admin.config_set("requirepass", "changed")  # the credentials change under a running process
        client.connection_pool.disconnect()
        began = time.monotonic()
        with pytest.raises(redis.AuthenticationError):
            QUICK.call(client.ping)
        assert time.monotonic() - began < 1
        refusals: list[BaseException] = []
        threading.Timer(0.6, lambda: admin.config_set("requirepass", "right")).start()
        assert QUICK.call(client.ping, retry_refusals=True, on_failure=refusals.append)
        assert refusals and all(isinstance(r, redis.AuthenticationError) for r in refusals)
