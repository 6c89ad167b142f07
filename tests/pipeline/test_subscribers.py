"""Subscribers wait through quiet streams, missing streams and Redis restarts, resume, and share work in groups.

Entries are XADDed directly with redis-py (the schema-v1 shapes of design.md §3): no pipeline needed.
Time constants (read block, socket timeout, backoff) are shortened through the Subscriber's parameters.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segstream.commands.main import main as cli_main
from segstream.pipeline.wire.consumer import Subscriber
from redis_server import PrivateRedis, free_port, stop_process
from segstream.pipeline.wire.redis_link import RedisLinkError
from segstream.pipeline.wire.entries import describe, entry_kind

FAST = {"read_block_ms": 200, "socket_timeout": 0.5, "backoff_initial": 0.05, "backoff_max": 0.3}


def frame(stream: str, n: int) -> dict:
    return {"schema": 1, "stream": stream, "frame": n, "pts": n / 25, "time": time.time(), "width": 64,
            "height": 48, "dropped": 0, "instances": []}


def xadd(client, stream: str, message: dict) -> str:
    return client.xadd(f"segstream:{stream}", {"data": json.dumps(message)}).decode()


READERS: list[Reader] = []


@pytest.fixture(autouse=True)
def close_readers():
    yield
    while READERS:
        READERS.pop().subscriber.close()


class Reader:
    """Iterates a Subscriber in a thread; messages land in a queue; closed after the test."""

    def __init__(self, subscriber: Subscriber) -> None:
        READERS.append(self)
        self.subscriber = subscriber
        self.messages: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for message in self.subscriber:
                self.messages.put(message)
        except BaseException as exc:  # surfaced by next()
            self.error = exc

    def next(self, timeout: float = 10) -> dict:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s (reader error: {self.error!r})") from None

    def nothing_for(self, seconds: float) -> bool:
        try:
            self.messages.get(timeout=seconds)
            return False
        except queue.Empty:
            return self.error is None


class Cli:
    """`segstream subscribe ...` as a subprocess whose stdout/stderr lines arrive in queues."""

    def __init__(self, *args: str) -> None:
        exe = Path(sys.executable).with_name("segstream")
        self.process = subprocess.Popen([str(exe), "subscribe", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        self.out: queue.Queue = queue.Queue()
        self.err_lines: list[str] = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self.out.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, self.err_lines.append), daemon=True).start()

    @staticmethod
    def _pump(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def line(self, timeout: float = 30) -> str:
        try:
            return self.out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s; stderr: {self.err_lines}") from None

    def wait_stderr(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.err_lines):
            assert time.monotonic() < deadline, f"{text!r} not in stderr: {self.err_lines}"
            time.sleep(0.05)

    def finish(self, timeout: float = 15) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            stop_process(self.process)


# appendfsync always: with the default everysec, a busy machine may postpone the AOF write of the last
# second (while an fsync is slow) and a SIGKILL then loses it; these tests need what was written to stay.
DURABLE = ["--appendfsync", "always"]


@pytest.fixture
def durable_redis():
    server = PrivateRedis(DURABLE, appendonly=True)
    server.start()
    yield server
    server.stop()


def test_a_quiet_stream_longer_than_the_socket_timeout_still_delivers_the_next_entry(redis_url, redis_client):
    xadd(redis_client, "quiet", frame("quiet", 0))
    reader = Reader(Subscriber(redis_url, "quiet", from_start=True, **FAST))
    assert reader.next()["frame"] == 0
    assert reader.nothing_for(1.5)  # three socket timeouts of silence
    xadd(redis_client, "quiet", frame("quiet", 1))
    assert reader.next()["frame"] == 1


def test_a_subscriber_idle_across_a_redis_kill_and_restart_receives_the_next_entry(durable_redis, caplog):
    client = durable_redis.client()
    xadd(client, "cam1", frame("cam1", 0))
    subscriber = Subscriber(durable_redis.url, "cam1", from_start=True, **FAST)
    reader = Reader(subscriber)
    member = Reader(Subscriber(durable_redis.url, "cam9", group="g", consumer="c", **FAST))  # nothing read yet
    assert reader.next()["frame"] == 0
    durable_redis.kill()
    assert reader.nothing_for(1.0)  # Redis away for a while: the subscriber keeps trying, no error
    assert subscriber.unreachable_since is not None
    durable_redis.restart()
    client = durable_redis.client()
    xadd(client, "cam1", frame("cam1", 1))
    xadd(client, "cam9", frame("cam9", 0))
    assert reader.next()["frame"] == 1  # continues after frame 0: nothing repeated, nothing skipped
    assert member.next()["frame"] == 0
    assert reader.nothing_for(0.5) and member.nothing_for(0.1)
    assert subscriber.unreachable_since is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "segstream.consumer"]
    # One line per outage and subscriber (two subscribers here), not one per retry.
    assert sum("unreachable since" in w for w in warnings) == 2, warnings
    assert sum("reachable again" in w for w in warnings) == 2, warnings


def test_a_redis_that_stops_answering_is_waited_for_and_reading_resumes(durable_redis):
    client = durable_redis.client()
    subscriber = Subscriber(durable_redis.url, "stall", **FAST)
    reader = Reader(subscriber)
    durable_redis.pause()  # SIGSTOP: the socket stays open, nothing answers
    try:
        assert reader.nothing_for(1.5)
        assert subscriber.unreachable_since is not None  # noticed through the socket timeout
    finally:
        durable_redis.resume()
    xadd(client, "stall", frame("stall", 7))
    assert reader.next()["frame"] == 7


def test_subscribe_prints_the_next_frame_after_a_redis_restart_with_one_warning_per_outage():
    server = PrivateRedis(["--requirepass", "hunter2", *DURABLE], password="hunter2", appendonly=True)
    with server:
        client = server.client()
        xadd(client, "door", frame("door", 0))
        cli = Cli("door", "--redis", server.url, "--from-start")
        assert cli.line().startswith("door frame 0 ")
        server.kill()
        cli.wait_stderr("unreachable since")
        time.sleep(1.5)  # several retries while down
        server.restart()
        client = server.client()
        xadd(client, "door", frame("door", 1))
        assert cli.line().startswith("door frame 1 ")
        cli.wait_stderr("reachable again")
        xadd(client, "door", {"schema": 1, "stream": "door", "eos": True, "frames": 2})
        assert cli.line() == "door end of stream: 2 frames"
        assert cli.finish() == 0
    outage = [line for line in cli.err_lines if "unreachable since" in line]
    assert len(outage) == 1 and outage[0].endswith(")") and ", retrying" in outage[0], cli.err_lines
    assert sum("reachable again" in line for line in cli.err_lines) == 1, cli.err_lines
    assert not any("hunter2" in line for line in cli.err_lines) and "***" in outage[0]
    assert not any("Traceback" in line for line in cli.err_lines)


def test_a_stream_that_does_not_exist_yet_is_waited_for(redis_url, redis_client):
    plain = Reader(Subscriber(redis_url, "later", **FAST))
    grouped = Reader(Subscriber(redis_url, "later2", group="g", consumer="c", **FAST))
    assert plain.nothing_for(0.8) and grouped.nothing_for(0.1)
    xadd(redis_client, "later", frame("later", 0))
    xadd(redis_client, "later2", frame("later2", 0))
    assert plain.next()["frame"] == 0 and grouped.next()["frame"] == 0


def test_redis_unreachable_at_start_is_an_error_unless_asked_to_wait():
    server = PrivateRedis(appendonly=True, port=free_port())
    with pytest.raises(RedisLinkError, match="cannot reach Redis"):
        Subscriber(server.url, "cam", **FAST)
    reader = Reader(Subscriber(server.url, "cam", from_start=True, wait=True, **FAST))
    assert reader.nothing_for(0.5)
    with server:
        xadd(server.client(), "cam", frame("cam", 0))
        assert reader.next()["frame"] == 0


def test_subscribe_after_an_entry_id_resumes_exactly_after_that_entry(redis_url, redis_client, capsys):
    ids = [xadd(redis_client, "resume", frame("resume", n)) for n in range(5)]
    eos_id = xadd(redis_client, "resume", {"schema": 1, "stream": "resume", "eos": True, "frames": 5})
    cli = Cli("resume", "--redis", redis_url, "--after", ids[2])
    lines = [cli.line() for _ in range(3)]
    assert cli.finish() == 0
    assert [line.split()[:3] for line in lines[:2]] == [["resume", "frame", "3"], ["resume", "frame", "4"]]
    assert lines[2] == "resume end of stream: 5 frames"
    assert cli.out.empty()
    # A malformed id is one clear error line, not a traceback.
    assert cli_main(["subscribe", "resume", "--redis", redis_url, "--after", "yesterday"]) == 2
    assert "'yesterday' is not a Redis stream entry id" in capsys.readouterr().err
    # The API says which id to persist: resuming from it yields only what came later.
    subscriber = Subscriber(redis_url, "resume", after=ids[3], block_ms=300, **FAST)
    assert [m.get("frame") for m in subscriber] == [4, None]
    assert subscriber.last_id == eos_id


def test_a_group_member_killed_and_restarted_gets_each_entry_once_overall(durable_redis):
    client = durable_redis.client()
    for n in range(6):
        xadd(client, "work", frame("work", n))
    handled: list[int] = []
    first = iter(Subscriber(durable_redis.url, "work", group="annotators", consumer="a1", **FAST))
    for _ in range(3):  # handles 0, 1 and is in the middle of 2 when it dies (2 is never acknowledged)
        message = next(first)
        handled.append(message["frame"])
    del first  # killed: no goodbye, no XACK of frame 2; frames 3-5 were delivered to it in the same read
    durable_redis.kill()
    durable_redis.restart()
    client = durable_redis.client()
    pending = client.xpending("segstream:work", "annotators")["pending"]
    assert pending == 4  # frame 2 in flight + 3..5 delivered but not handed out

    subscriber = Subscriber(durable_redis.url, "work", group="annotators", consumer="a1", **FAST)
    reader = Reader(subscriber)
    redelivered = [reader.next()["frame"] for _ in range(4)]
    xadd(client, "work", frame("work", 6))
    redelivered.append(reader.next()["frame"])
    assert reader.nothing_for(0.5)
    # At least once: the entry that was being handled comes again; nothing is skipped or repeated otherwise.
    assert handled == [0, 1, 2] and redelivered == [2, 3, 4, 5, 6]
    assert client.xpending("segstream:work", "annotators")["pending"] == 0  # all handled and acknowledged


def test_subscribe_with_a_group_prints_each_entry_once_across_restarts(redis_url, redis_client, capsys):
    def run_once() -> list[str]:
        assert cli_main(["subscribe", "jobs", "--redis", redis_url, "--group", "printers", "--consumer", "p1"]) == 0
        return capsys.readouterr().out.splitlines()

    for n in range(2):
        xadd(redis_client, "jobs", frame("jobs", n))
    xadd(redis_client, "jobs", {"schema": 1, "stream": "jobs", "eos": True, "frames": 2})
    first = run_once()
    xadd(redis_client, "jobs", frame("jobs", 2))
    xadd(redis_client, "jobs", {"schema": 1, "stream": "jobs", "eos": True, "frames": 3})
    second = run_once()
    assert [line.split(":")[0].split()[1:3] for line in first] == [["frame", "0"], ["frame", "1"], ["end", "of"]]
    assert [line.split(":")[0].split()[1:3] for line in second] == [["frame", "2"], ["end", "of"]]
    assert redis_client.xpending("segstream:jobs", "printers")["pending"] == 0


def test_status_and_unknown_kinds_are_printed_and_unreadable_entries_reported_once(redis_url, redis_client):
    since = time.time() - 5
    xadd(redis_client, "cam2", frame("cam2", 0))
    xadd(redis_client, "cam2", {"schema": 1, "stream": "cam2", "status": "reconnecting", "since": since,
                                "reconnects": 3, "url": "rtsp://user:***@10.0.0.7/live", "error": "connection refused"})
    xadd(redis_client, "cam2", {"schema": 1, "stream": "cam2", "heartbeat": 12})  # a kind from a newer producer
    not_json = redis_client.xadd("segstream:cam2", {"data": "not json"}).decode()
    no_data = redis_client.xadd("segstream:cam2", {"other": "field"}).decode()
    xadd(redis_client, "cam2", frame("cam2", 1))
    xadd(redis_client, "cam2", {"schema": 1, "stream": "cam2", "status": "live", "since": since, "reconnects": 3})
    cli = Cli("cam2", "--redis", redis_url, "--from-start", "--idle", "1.5")
    lines = [cli.line() for _ in range(5)]
    assert cli.finish() == 0, cli.err_lines
    clock = time.strftime("%H:%M:%S", time.localtime(since))
    assert lines[0].startswith("cam2 frame 0 ")
    assert lines[1] == (f"cam2 status reconnecting since {clock} (3 reconnects) rtsp://user:***@10.0.0.7/live: "
                        "connection refused")
    assert lines[2] == "cam2 unknown entry (keys: heartbeat, schema, stream)"
    # Entries that cannot be read are not printed as entries: one warning each, naming the entry and why.
    assert lines[3].startswith("cam2 frame 1 ")
    assert lines[4] == f"cam2 status live since {clock} (3 reconnects)"
    assert cli.out.empty()
    skipped = [line for line in cli.err_lines if "malformed" in line]
    assert skipped == [f"segstream: warning: skipped malformed entry {not_json} of segstream:cam2: data is not JSON",
                       f"segstream: warning: skipped malformed entry {no_data} of segstream:cam2: no data field; "
                       "fields: other"], cli.err_lines
    assert not any("Traceback" in line or "Error" in line for line in cli.err_lines), cli.err_lines


def test_entry_kind_tells_frames_eos_status_and_unknown_apart():
    assert entry_kind(frame("c", 0)) == "frame"
    assert entry_kind({"schema": 1, "stream": "c", "eos": True, "frames": 3}) == "eos"
    assert entry_kind({"schema": 1, "stream": "c", "status": "down", "since": 0, "reconnects": 0}) == "status"
    assert entry_kind({"schema": 1, "stream": "c", "frame": 3}) == "unknown"
    assert entry_kind({}) == "unknown"
    assert describe({"stream": "c", "status": "connecting"}) == "c status connecting"
    assert describe({}) == "? unknown entry (keys: )"
    assert describe({"stream": "c", "eos": True}) == "c end of stream"  # malformed: still no KeyError
    assert describe({"stream": "c", "frame": 1, "instances": []}) == "c unknown entry (keys: frame, instances, stream)"


def test_the_consumer_import_the_readme_documents_still_works():
    from pathlib import Path

    from segstream.pipeline import consumer
    from segstream.pipeline.wire import consumer as wire_consumer

    documented = "from segstream.pipeline.consumer import Subscriber, decode_mask, entry_kind"
    assert documented in (Path(__file__).parents[2] / "README.md").read_text()
    assert consumer.Subscriber is wire_consumer.Subscriber and callable(consumer.decode_mask)
