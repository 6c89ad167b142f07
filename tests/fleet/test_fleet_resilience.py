"""What a fleet process lives through without an operator: Redis coming back empty (its jobs' group
gone), a serve started before its Redis (probes answer meanwhile), and the cameras an older
`segstream serve` remembered under its own key (carried into the camera book once, on upgrade).
Real processes and a real redis-server."""

from __future__ import annotations

import json
import signal
import subprocess

from fleet_helpers import SEGSTREAM, WorkerProcess, entries, wait_for, write_config
from media import write_clip
from redis_server import PrivateRedis, free_port
from servers import http_status
from segstream.fleet.cameras import CameraBook, adopt_service_streams
from segstream.fleet.jobs import JobQueue
from segstream.fleet.keys import FleetKeys
from segstream.pipeline.config import SourcesSection

FRAMES = 20


def test_a_redis_that_comes_back_empty_costs_the_worker_nothing_it_takes_the_next_job(tmp_path):
    redis = PrivateRedis()
    redis.start()
    clip = write_clip(tmp_path / "after.mp4", width=224, height=128, frames=FRAMES)
    worker = WorkerProcess(write_config(tmp_path, redis.url, lease=3.0, heartbeat=0.5), "steady", 1, tmp_path)
    try:
        client = redis.client()
        wait_for(lambda: worker.ready(client), 120, "the worker to join")
        client.flushall()  # what a Redis restart without persistence leaves: no group, no records
        wait_for(lambda: "consumer group was gone" in worker.output(), 30,
                 lambda: f"the worker to notice its jobs' group is gone:\n{worker.output()[-2000:]}")
        job = JobQueue(client, FleetKeys()).submit(str(clip), "after")
        wait_for(lambda: client.hget(f"segstream:fleet:job:{job}", "state") == b"done", 120,
                 lambda: f"the job after the flush to finish; worker said:\n{worker.output()[-2000:]}")
        assert [m["frame"] for _, m in entries(client, "after") if "frame" in m] == list(range(FRAMES))
        assert "Traceback" not in worker.output()
        assert worker.terminate() == 0, worker.output()
    finally:
        worker.cleanup()
        redis.stop()


def test_a_serve_started_before_its_redis_answers_its_probes_and_stops_on_one_sigterm(tmp_path):
    redis = PrivateRedis()  # never started
    port = free_port()
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([SEGSTREAM, "serve", "--config", str(write_config(tmp_path, redis.url)),
                              "--http", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        wait_for(lambda: http_status(port, "/livez") == 200, 60, lambda: f"/livez to answer:\n{log.read_text()}")
        assert http_status(port, "/readyz") == 503  # not ready: no Redis, no model
        wait_for(lambda: "Redis unreachable" in log.read_text(), 60, "serve to say Redis is unreachable")
        assert http_status(port, "/livez") == 200 and http_status(port, "/readyz") == 503
        serve.send_signal(signal.SIGTERM)  # one signal: it stops waiting, nothing to drain
        assert serve.wait(20) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_cameras_an_older_serve_remembered_move_into_the_camera_book_once(caplog):
    redis = PrivateRedis()
    redis.start()
    try:
        client = redis.client()
        old = "segstream:service:streams"
        client.hset(old, mapping={
            "gate": json.dumps({"id": "gate", "url": "rtsp://127.0.0.1:8554/gate", "kind": "live"}),
            "yard": json.dumps({"id": "yard", "url": "rtsp://127.0.0.1:8554/yard", "gating": "on"}),
            "taken": json.dumps({"id": "taken", "url": "rtsp://127.0.0.1:8554/old"}),
            "clip": json.dumps({"id": "clip", "url": "/srv/media/clip.mp4"}),
            "crlf": json.dumps({"id": "crlf", "url": "gopher://127.0.0.1:6379/_SET%20canary%201"}),
            "junk": "{not json",
        })
        book = CameraBook(client, FleetKeys(), lease=3.0)
        book.add("taken", "rtsp://127.0.0.1:8554/new")  # the book already has this id: it wins
        adopt_service_streams(book, old, SourcesSection())
        wanted = book.wanted()
        assert set(wanted) == {"gate", "yard", "taken"}
        assert wanted["yard"].gating == "on" and wanted["gate"].origin == "api"
        assert wanted["taken"].url.endswith("/new")
        assert not client.exists(old) and client.hlen(f"{old}:adopted") == 6  # kept, read once
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "2 moved into the camera book" in said and "clip (a local file: not replayed)" in said
        assert "crlf" in said and "junk" in said
        adopt_service_streams(book, old, SourcesSection())  # a second start: nothing more to do
        assert set(book.wanted()) == {"gate", "yard", "taken"}
        assert not client.exists("canary")
    finally:
        redis.stop()
