"""The pieces under the fleet, against a real Redis: fenced writes, where a job resumes, balance."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from segstream.fleet.cameras import CameraBook, share
from segstream.fleet.jobs import JobQueue
from segstream.fleet.keys import FleetKeys
from segstream.pipeline.sinks.redis_stream import RedisStreamSink


def test_a_writer_whose_token_was_superseded_adds_nothing_and_is_told(redis_url, redis_client):
    refused: list[str] = []
    sink = RedisStreamSink(redis_url)
    sink.on_fenced = refused.append
    redis_client.set("fence", 1)
    sink.fence("cam", "fence", 1)
    sink.write_status(SimpleNamespace(stream_id="cam"), {"status": "live", "n": 1})
    deadline = time.monotonic() + 10
    while sink.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    redis_client.incr("fence")  # another worker took the camera
    sink.write_status(SimpleNamespace(stream_id="cam"), {"status": "live", "n": 2})
    while not refused and time.monotonic() < deadline:
        time.sleep(0.01)
    sink.write_status(SimpleNamespace(stream_id="cam"), {"status": "live", "n": 3})  # dropped at once
    sink.write_status(SimpleNamespace(stream_id="other"), {"status": "live", "n": 4})  # unfenced: unaffected
    assert sink.close(5)
    assert refused == ["cam"]
    assert [json.loads(f[b"data"])["n"] for _, f in redis_client.xrange("segstream:cam")] == [1]
    assert redis_client.xlen("segstream:other") == 1


def test_a_claimed_job_resumes_after_its_newest_frame_and_ignores_an_older_run(redis_url, redis_client):
    queue = JobQueue(redis_client, FleetKeys(), lease=0.0)
    key = "segstream:clip"
    redis_client.xadd(key, {"data": json.dumps({"schema": 1, "stream": "clip", "eos": True, "frames": 9})})  # an earlier run
    queue.submit("/videos/clip.mp4", "clip")
    first = queue.claim("w1", *queue.take("w1", 1, 100)[0])
    assert queue.resume_point(first).start_frame is None
    for n in range(5):
        redis_client.xadd(key, {"data": json.dumps({"schema": 1, "stream": "clip", "frame": n, "pts": None,
                                                    "time": 1.0, "width": 64, "height": 48, "instances": []})})
    # An entry that is not schema v1 (as this test once wrote them) is not a point to resume from.
    redis_client.xadd(key, {"data": json.dumps({"stream": "clip", "frame": 7, "instances": []})})
    second = queue.claim("w2", *queue.take("w2", 1, 100)[0])  # w1 went silent (lease 0 here)
    assert (second.attempts, second.token) == (2, first.token + 1)
    assert queue.resume_point(second).start_frame == 5
    assert not queue.refresh(first, "w1")  # the old claim is fenced out
    assert not queue.finish(first, "done", frames=5)
    redis_client.xadd(key, {"data": json.dumps({"schema": 1, "stream": "clip", "eos": True, "frames": 12})})
    assert queue.resume_point(second).eos_frames == 12
    assert queue.finish(second, "done", frames=12)
    assert redis_client.xlen("segstream:fleet:jobs") == 0
    assert redis_client.hget(f"segstream:fleet:job:{second.job_id}", "state") == b"done"


def test_a_camera_lease_is_exclusive_and_its_token_grows(redis_url, redis_client):
    book = CameraBook(redis_client, FleetKeys(), lease=0.3)
    book.add("cam", "rtsp://example/cam")
    first = book.acquire("cam", "a")
    assert first and not book.acquire("cam", "b")
    assert book.renew("cam", "a") and not book.renew("cam", "b")
    time.sleep(0.4)  # a stopped heartbeating
    second = book.acquire("cam", "b")
    assert second == first + 1
    assert not book.renew("cam", "a")


def test_cameras_are_shared_by_capacity():
    assert share(4, 2, {"a": 2, "b": 2}) == 2
    assert share(6, 1, {"small": 1, "big": 2}) == 2
    assert share(6, 2, {"small": 1, "big": 2}) == 4
    assert share(5, 1, {"a": 1, "b": 1}) == 3  # rounded up: every camera finds an owner
    assert share(0, 4, {"a": 4}) == 0
