"""Redis refusing our credentials is a clear error, never a silent retry loop: exit 2 at start
with one line; while running the sink reports down (so /readyz says 503) and logs one line a
minute until the credentials work again. Real redis-server processes, their passwords changed live."""

from __future__ import annotations

import logging
import time

import redis as redis_py

from servers import segstream_cli
from segstream.pipeline.messages import StreamStatus
from redis_server import PrivateRedis
from segstream.pipeline.sinks.redis_stream import RedisStreamSink
from segstream.pipeline.wire.entries import status_message
from segstream.service.stream_book import StreamBook
from servers import wait_for  # noqa: E402


def refused_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused the credentials" in r.getMessage()]


def test_serve_with_a_wrong_password_exits_2_with_one_line():
    with PrivateRedis(["--requirepass", "right"], password="wrong") as url:
        result = segstream_cli("serve", "--redis", url, "--http", "127.0.0.1:0", timeout=120)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("segstream: error:")]
    assert len(errors) == 1 and "refused the credentials" in errors[0], result.stderr
    assert "wrong" not in result.stderr, "the password is never printed"


def test_a_password_changed_while_publishing_is_one_error_line_a_minute_and_down_until_fixed(caplog):
    caplog.set_level(logging.WARNING)
    with PrivateRedis() as url:
        admin = redis_py.Redis.from_url(url)
        sink = RedisStreamSink(url, backoff_initial=0.01, backoff_max=0.05)
        try:
            admin.config_set("requirepass", "rotated")
            admin = redis_py.Redis.from_url(url.replace("redis://", "redis://:rotated@"))
            admin.client_kill_filter(_type="normal", skipme=True)  # the sink's connection is gone
            status = StreamStatus("cam", "live", time.time(), 0, "rtsp://cam")
            sink.write_status(status, status_message(status))
            wait_for(lambda: refused_lines(caplog), 10, "a line saying Redis refused the credentials")
            time.sleep(1.5)  # dozens of retries at this backoff: still one line
            assert len(refused_lines(caplog)) == 1, refused_lines(caplog)
            assert not sink.up, "down while refused (the service's /readyz answers 503)"
            assert "rotated" not in refused_lines(caplog)[0]
            admin.config_set("requirepass", "")  # the operator fixes it: publishing resumes
            wait_for(lambda: sink.up and sink.pending() == 0, 10, "the sink to publish again")
            assert admin.xlen("segstream:cam") == 1
        finally:
            sink.close(2)


def test_the_stream_book_says_why_redis_refuses_it_once(caplog):
    caplog.set_level(logging.WARNING, logger="segstream.service")
    with PrivateRedis(["--requirepass", "right"], password="wrong") as url:
        book = StreamBook(url, "segstream:", retry_interval=0.02)
        loaded = []
        book.start(loaded.append)
        try:
            book.remember({"id": "cam9", "url": "rtsp://cam9"})
            wait_for(lambda: book.trouble, 10, "the book's trouble")
            time.sleep(0.5)  # many retries
        finally:
            book.close(1)
    lines = [r.getMessage() for r in caplog.records if "stream book" in r.getMessage()]
    assert len(lines) == 1 and "refused the credentials" in lines[0], lines
    assert "wrong" not in lines[0] and not loaded
