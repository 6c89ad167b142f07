"""A worker and Redis that goes away: the worker waits for it (at start and mid-job), and the
file is still published completely, every frame once."""

from __future__ import annotations

import signal
import time

from fleet_helpers import WorkerProcess, entries, wait_for, write_config
from media import write_clip
from segstream.fleet.jobs import JobQueue
from segstream.fleet.keys import FleetKeys
from redis_server import PrivateRedis

FRAMES = 40


def test_a_worker_waits_for_redis_and_a_redis_restart_mid_job_loses_no_frame(tmp_path):
    redis = PrivateRedis(appendonly=True)  # not started yet: the worker comes up first
    clip = write_clip(tmp_path / "outage.mp4", width=224, height=128, frames=FRAMES)
    worker = WorkerProcess(write_config(tmp_path, redis.url, lease=10.0, heartbeat=1.0), "patient", 1, tmp_path)
    try:
        wait_for(lambda: "Redis unreachable" in worker.output(), 120, "the worker to say Redis is unreachable")
        assert worker.process.poll() is None
        redis.start()
        client = redis.client()
        wait_for(lambda: worker.ready(client), 60, "the worker to join once Redis is up")
        job = JobQueue(client, FleetKeys()).submit(str(clip), "outage")
        wait_for(lambda: len(entries(client, "outage")) >= 5, 60, "the job to publish its first frames")
        redis.kill()
        time.sleep(2)
        redis.restart()
        client = redis.client()
        wait_for(lambda: client.hget(f"segstream:fleet:job:{job}", "state") == b"done", 90, "the job to finish")
        stream = entries(client, "outage")
        assert [m["frame"] for _, m in stream if "frame" in m] == list(range(FRAMES))
        assert [m["frames"] for _, m in stream if m.get("eos")] == [FRAMES]
        assert worker.terminate() == 0, worker.output()
    finally:
        worker.cleanup()
        redis.stop()


def test_a_worker_waiting_for_a_redis_that_never_comes_stops_on_one_sigterm_and_exits_0(tmp_path):
    redis = PrivateRedis()  # never started: nothing answers on its port
    worker = WorkerProcess(write_config(tmp_path, redis.url, lease=10.0, heartbeat=1.0), "waiting", 1, tmp_path)
    try:
        wait_for(lambda: "Redis unreachable" in worker.output(), 120, "the worker to say Redis is unreachable")
        worker.process.send_signal(signal.SIGTERM)  # one signal only: it stops waiting, nothing to drain
        assert worker.process.wait(15) == 0, worker.output()
        assert "Traceback" not in worker.output()
    finally:
        worker.cleanup()
