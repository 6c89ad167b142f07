"""Redis refusing our credentials is a clear error, never a silent retry loop: exit 2 at start
with one line; while running the sink reports down (so /readyz says 503) and logs one line a
minute until the credentials work again. Real redis-server processes, their passwords changed live."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import redis as redis_py

from servers import segstream_cli
from segstream.pipeline.messages import StreamStatus
from redis_server import PrivateRedis
from segstream.pipeline.sinks.redis_stream import RedisStreamSink
from segstream.pipeline.wire.entries import status_message
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


def test_a_worker_whose_redis_refuses_the_credentials_says_why_once_and_is_not_ready(tmp_path):
    """The camera book and the jobs live in Redis: a password changed under a running worker is one
    error line (not a silent retry loop), /readyz 503, and work again once the password is fixed."""
    import json
    import subprocess

    import yaml

    from redis_server import free_port, stop_process
    from servers import http_status

    with PrivateRedis() as url:
        admin = redis_py.Redis.from_url(url)
        config = tmp_path / "worker.yaml"
        config.write_text(yaml.safe_dump({"model": {"input_size": [128, 224]}, "redis": {"url": url},
                                          "fleet": {"lease": 3.0, "heartbeat": 0.2}}))
        port = free_port()
        log = tmp_path / "worker.log"
        exe = Path(sys.executable).with_name("segstream")
        worker = subprocess.Popen([str(exe), "worker", "--config", str(config), "--name", "w1", "--http", f"127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=log.open("w"))
        try:
            wait_for(lambda: http_status(port, "/readyz") == 200, 120, "the worker to be ready")
            admin.config_set("requirepass", "rotated")
            admin = redis_py.Redis.from_url(url.replace("redis://", "redis://:rotated@"))
            admin.client_kill_filter(_type="normal", skipme=True)  # the worker's connections are gone
            refused = lambda: [line for line in log.read_text().splitlines()  # noqa: E731
                               if "worker w1" in line and "refused the credentials" in line]
            wait_for(refused, 15, "a line saying Redis refused the worker's credentials")
            time.sleep(2.0)  # ten heartbeats and many main-loop rounds at this pace: still one line
            assert len(refused()) == 1, refused()
            assert "rotated" not in log.read_text()
            wait_for(lambda: http_status(port, "/readyz") == 503, 15, "/readyz to say 503")
            admin.config_set("requirepass", "")  # the operator fixes it: the worker's record is written again
            admin.delete("segstream:fleet:worker:w1")
            wait_for(lambda: admin.exists("segstream:fleet:worker:w1"), 15, "the worker's heartbeat again")
            assert json.loads(admin.hget("segstream:fleet:worker:w1", "streams")) == []
        finally:
            stop_process(worker)
