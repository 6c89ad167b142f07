"""File jobs over several worker processes: a worker killed mid-job loses no frame and adds none."""

from __future__ import annotations

import signal

import pytest

from fleet_helpers import WorkerProcess, cli, entries, wait_for, write_config
from media import write_clip
from segstream.fleet.jobs import JobQueue
from segstream.fleet.keys import FleetKeys

FRAMES = 40


@pytest.fixture
def workers(tmp_path):
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.cleanup()


def job_records(client) -> dict[str, dict[str, str]]:
    out = {}
    for key in client.scan_iter("segstream:fleet:job:*"):
        record = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        out[record["stream_id"]] = record
    return out


def test_workers_killed_or_stopped_mid_job_lose_no_frame_and_publish_none_twice(tmp_path, redis_url, redis_client, workers):
    clips = [write_clip(tmp_path / f"clip{i}.mp4", width=224, height=128, frames=FRAMES) for i in range(6)]
    config = write_config(tmp_path, redis_url)
    # A job whose workers all died while running it (three times: fleet.max_attempts) is not run again.
    ghosts = JobQueue(redis_client, FleetKeys(), lease=0.0)
    ghosts.submit(str(clips[0]), "poison")
    for ghost in ("ghost1", "ghost2", "ghost3"):
        ghosts.claim(ghost, *ghosts.take(ghost, 1, block_ms=100)[0])
    for name in ("w1", "w2", "w3"):
        workers.append(WorkerProcess(config, name, capacity=2, log_dir=tmp_path))
    wait_for(lambda: all(w.ready(redis_client) for w in workers), 120, "three workers to load their engine")

    submitted = cli("submit", *map(str, clips), str(tmp_path / "missing.mp4"), "--redis", redis_url)
    assert submitted.returncode == 0, submitted.stderr
    assert len(submitted.stdout.split()) == 7  # one job id per source

    real = {w.name for w in workers}

    def two_workers_mid_file():
        """(a job part-way through its file, its worker, another worker also part-way through one)."""
        running = []
        for stream_id, record in job_records(redis_client).items():
            published = len(entries(redis_client, stream_id))
            if record["state"] == "running" and record["worker"] in real and 4 <= published <= FRAMES // 2:
                running.append((stream_id, record["worker"]))
        for stream_id, worker in running:
            others = [w for _, w in running if w != worker]
            if others:
                return stream_id, worker, others[0]
        return None

    victim_stream, victim, leaver = wait_for(two_workers_mid_file, 120, "two workers part-way through files")
    doomed = next(w for w in workers if w.name == victim)
    doomed.signal(signal.SIGKILL)
    doomed.process.wait(10)
    # A worker stopped with SIGTERM mid-job hands its jobs back and exits 0; the last one resumes them.
    stopped = next(w for w in workers if w.name == leaver)
    assert stopped.terminate() == 0, stopped.output()
    assert "handed back" in stopped.output()

    def all_finished():
        records = job_records(redis_client)
        return len(records) == 8 and all(r["state"] in ("done", "failed") for r in records.values()) and records

    records = wait_for(all_finished, 150, "every job to finish after the kill")
    for clip in clips:
        stream = entries(redis_client, clip.stem)
        frames = [m["frame"] for _, m in stream if "frame" in m]
        eos = [m for _, m in stream if m.get("eos")]
        assert frames == list(range(FRAMES)), f"{clip.stem}: frames {frames}"
        assert len(eos) == 1 and eos[0]["frames"] == FRAMES and "eos" in stream[-1][1], clip.stem
        assert records[clip.stem]["state"] == "done"
    assert int(records[victim_stream]["attempts"]) == 2  # resumed by another worker after the kill
    assert records[victim_stream]["worker"] != victim
    assert records["missing"]["state"] == "failed"
    assert "not found" in records["missing"]["reason"]
    assert records["poison"]["state"] == "failed"
    assert "given up after 3 attempts" in records["poison"]["reason"]
    assert entries(redis_client, "poison") == []

    # Finished jobs leave nothing behind in the jobs stream or its pending list.
    assert redis_client.xlen("segstream:fleet:jobs") == 0
    assert redis_client.xpending("segstream:fleet:jobs", "workers")["pending"] == 0

    status = cli("status", "--redis", redis_url, "--lease", "3")
    assert status.returncode == 0, status.stderr
    assert "6 done, 2 failed" in status.stdout
    assert "video file not found" in status.stdout

    last = next(w for w in workers if w not in (doomed, stopped))
    assert last.terminate() == 0, last.output()
