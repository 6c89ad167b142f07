"""Bad jobs never stop a fleet: two real workers given 10 malformed jobs among 5 valid ones finish the
valid ones (every frame once, one EOS each), fail the malformed ones with their reason, and keep running.
A job whose result stream holds a malformed entry still resumes after its last valid frame."""

from __future__ import annotations

import json
import time

import pytest

from fleet_helpers import WorkerProcess, cli, wait_for, write_config
from media import write_clip
from segstream.fleet.jobs import JobQueue
from segstream.fleet.keys import FleetKeys
from segstream.pipeline.wire.schema import MalformedEntry, parse_entry

FRAMES = 12
JOBS = "segstream:fleet:jobs"


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.cleanup()


def valid_results(client, stream_id: str) -> list[dict]:
    out = []
    for _, fields in client.xrange(f"segstream:{stream_id}"):
        try:
            out.append(parse_entry(fields))
        except MalformedEntry:
            pass
    return out


def record(client, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(f"segstream:fleet:job:{job_id}").items()}


def write_malformed_jobs(client, clip: str) -> dict[str, str]:
    """Ten jobs written straight into Redis that cannot run as written: job id (or entry id) -> what is wrong."""
    def job(job_id: str, **fields) -> None:
        if fields:
            client.hset(f"segstream:fleet:job:{job_id}", mapping=fields)
        client.xadd(JOBS, {"job": job_id})

    good = {"source": clip, "state": "waiting", "attempts": "0", "base": "0-0", "worker": "", "reason": ""}
    job("nostream", id="nostream", **good)
    job("newline", id="newline", stream_id="cam1\n", **good)
    job("nosource", id="nosource", stream_id="nosource", state="waiting", attempts="0")
    job("attempts", id="attempts", stream_id="attempts", **{**good, "attempts": "abc"})
    job("base", id="base", stream_id="base", **{**good, "base": "x"})
    job("state", id="state", stream_id="state", **{**good, "state": "bogus"})
    job("empty", id="empty", stream_id="empty", **{**good, "source": ""})
    client.set("segstream:fleet:job:string", "not a hash")
    job("string")
    no_job = client.xadd(JOBS, {"other": "x"}).decode()
    bad_id = client.xadd(JOBS, {"job": "../x\n"}).decode()
    return {"nostream": "stream_id", "newline": "stream_id", "nosource": "source", "attempts": "attempts",
            "base": "base", "state": "state", "empty": "source", "string": "not a hash",
            no_job: "job: Field required", bad_id: "job: String should match pattern"}


def test_two_workers_given_10_malformed_and_5_valid_jobs_finish_the_valid_ones_and_keep_running(
        tmp_path, redis_url, redis_client, workers):
    clips = [str(write_clip(tmp_path / f"clip{i}.mp4", width=224, height=128, frames=FRAMES)) for i in range(5)]
    config = write_config(tmp_path, redis_url)
    queue = JobQueue(redis_client, FleetKeys(), lease=0.0)

    # A job whose first worker published frames 0-4 and died; after them someone wrote a malformed entry.
    resumed = queue.submit(clips[0], "resumed")
    ghost = queue.claim("ghost", *queue.take("ghost", 1, block_ms=100)[0])
    for n in range(5):
        redis_client.xadd("segstream:resumed", {"data": json.dumps(
            {"schema": 1, "stream": "resumed", "frame": n, "pts": n / 30, "time": 1.0, "width": 224, "height": 128,
             "dropped": 0, "instances": []})})
    redis_client.xadd("segstream:resumed", {"data": json.dumps({"schema": 1, "stream": "resumed", "frame": "x",
                                                                "instances": []})})
    assert ghost.attempts == 1

    # Malformed jobs, some first read by a member that then went silent, so XAUTOCLAIM hands them out.
    expected = write_malformed_jobs(redis_client, clips[1])
    queue.ensure_group()
    redis_client.xreadgroup("workers", "silent", {JOBS: ">"}, count=4)

    # A forged heartbeat hash: every worker reads its peers' hashes to balance cameras, status lists them.
    redis_client.hset("segstream:fleet:worker:forged", mapping={"capacity": "x", "load": "0", "streams": "{"})
    redis_client.zadd("segstream:fleet:workers", {"forged": time.time() + 3600})

    for name in ("w1", "w2"):
        workers.append(WorkerProcess(config, name, capacity=2, log_dir=tmp_path))
    wait_for(lambda: all(w.ready(redis_client) for w in workers), 120, "two workers to load their engine")
    submitted = cli("submit", *clips[1:], "--redis", redis_url)
    assert submitted.returncode == 0, submitted.stderr
    valid_ids = [resumed, *submitted.stdout.split()]
    streams = ["resumed"] + [f"clip{i}" for i in range(1, 5)]

    def valid_jobs_finished():
        return all(record(redis_client, j).get("state") in ("done", "failed") for j in valid_ids)

    wait_for(valid_jobs_finished, 180, "the five valid jobs to finish")
    wait_for(lambda: redis_client.xlen(JOBS) == 0, 30, "the jobs stream to empty")

    for job_id, stream_id in zip(valid_ids, streams):
        results = valid_results(redis_client, stream_id)
        frames = [m["frame"] for m in results if "frame" in m]
        eos = [m for m in results if m.get("eos")]
        assert frames == list(range(FRAMES)), f"{stream_id}: frames {frames}"
        assert len(eos) == 1 and eos[0]["frames"] == FRAMES, stream_id
        assert record(redis_client, job_id)["state"] == "done", record(redis_client, job_id)
    assert record(redis_client, resumed)["attempts"] == "2"  # the ghost's claim, then a worker's resume

    # Every malformed job failed once, with its reason, and left the stream and the pending list.
    dead = {f[b"job"].decode() if b"job" in f else f[b"entry"].decode(): f
            for _, f in redis_client.xrange(f"{JOBS}:dead")}
    dead_by_entry = {f[b"entry"].decode(): f for f in dead.values()}
    assert len(redis_client.xrange(f"{JOBS}:dead")) == 10
    for name, why in expected.items():
        fields = dead.get(name) or dead_by_entry[name]
        assert why in fields[b"reason"].decode(), (name, fields)
        if name in ("nostream", "newline", "nosource", "attempts", "base", "state", "empty"):
            failed = record(redis_client, name)
            assert failed["state"] == "failed" and why in failed["reason"], failed
    assert redis_client.xpending(JOBS, "workers")["pending"] == 0
    for stream_id in ("nostream", "nosource", "attempts", "base", "state", "empty"):
        assert redis_client.xlen(f"segstream:{stream_id}") == 0  # nothing ran for them

    # Both workers are still running, their heartbeats fresh, and no traceback in their logs.
    for worker in workers:
        assert worker.ready(redis_client), worker.output()
        assert "Traceback" not in worker.output()
    logs = "".join(w.output() for w in workers)
    assert "result entry" in logs and "not a resume point" in logs
    status = cli("status", "--redis", redis_url, "--lease", "3")
    assert status.returncode == 0, status.stderr
    for worker in workers:
        assert worker.terminate() == 0, worker.output()


def test_bad_camera_values_and_result_entries_are_skipped_not_fatal(redis_url, redis_client, caplog):
    from segstream.fleet.cameras import CameraBook

    book = CameraBook(redis_client, FleetKeys(), lease=3.0)
    book.add("door", "rtsp://127.0.0.1:8554/door")
    redis_client.hset("segstream:fleet:cameras", mapping={"list": "[1]", "nourl": '{"uri": "x"}', "number": '{"url": 5}',
                                                          "notjson": "rtsp://x", "bad\nid": '{"url": "rtsp://y"}',
                                                          "badkind": '{"url": "rtsp://z", "kind": "file"}'})
    with pytest.raises(ValueError, match="camera id"):
        book.add("cam1\n", "rtsp://127.0.0.1/x")
    with pytest.raises(ValueError, match="stream id"):
        JobQueue(redis_client, FleetKeys()).submit("/videos/a.mp4", "cam1\n")
    for _ in range(3):  # as every heartbeat asks
        assert {k: r.url for k, r in book.wanted().items()} == {"door": "rtsp://127.0.0.1:8554/door"}
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 6, warnings  # once per bad value, not once per heartbeat

    def frame(n) -> dict:
        return {"data": json.dumps({"schema": 1, "stream": "door", "frame": n, "pts": None, "time": 1.0,
                                    "width": 64, "height": 48, "instances": []})}

    redis_client.xadd("segstream:door", frame(6))
    redis_client.xadd("segstream:door", {"data": json.dumps({"schema": 1, "stream": "door", "frame": "x",
                                                             "instances": []})})
    redis_client.xadd("segstream:door", {"data": "not json"})
    assert book.next_frame("door") == 7  # continues after the newest valid frame
