"""Track ids are never reused in a stream, also when its job or camera moves to another worker:
the new owner's tracks start after the highest id already on the stream."""

from __future__ import annotations

import json
import signal

from fleet_helpers import WorkerProcess, cli, entries, wait_for, write_config
from media import write_shapes_clip
from segstream.fleet.cameras import CameraBook
from segstream.fleet.keys import FleetKeys

FRAMES = 60


def track_ids(stream: list[tuple[str, dict]]) -> list[int]:
    return [inst["track_id"] for _, m in stream if "frame" in m for inst in m["instances"]]


def test_a_job_resumed_on_another_worker_never_starts_its_track_ids_at_1_again(tmp_path, redis_url, redis_client):
    # Every frame a new scene: every frame starts new tracks, so ids grow fast and a restart at 1 shows.
    clip = write_shapes_clip(tmp_path / "shapes.mp4", frames=FRAMES, width=320, height=180)
    config = write_config(tmp_path, redis_url)
    first = WorkerProcess(config, "w1", capacity=1, log_dir=tmp_path)
    second = None
    try:
        wait_for(lambda: first.ready(redis_client), 120, "the first worker to load its engine")
        submitted = cli("submit", str(clip), "--redis", redis_url)
        assert submitted.returncode == 0, submitted.stderr
        wait_for(lambda: len(track_ids(entries(redis_client, "shapes"))) >= 10, 120,
                 "the first worker to publish frames with tracked objects")
        first.signal(signal.SIGSTOP)  # mid-file: what it published so far is all it ever will
        before = entries(redis_client, "shapes")
        first.signal(signal.SIGKILL)
        first.process.wait(10)
        assert not any(m.get("eos") for _, m in before), "the first worker finished the file: nothing moved"

        second = WorkerProcess(config, "w2", capacity=1, log_dir=tmp_path)
        job = next(redis_client.scan_iter("segstream:fleet:job:*"))
        record = wait_for(lambda: (lambda r: r if r.get("state") in ("done", "failed") else None)(
            {k.decode(): v.decode() for k, v in redis_client.hgetall(job).items()}),
            180, lambda: f"the job to finish on the second worker: {second.output()[-2000:]}")
        assert record["state"] == "done" and record["worker"] == "w2" and int(record["attempts"]) == 2
        done = entries(redis_client, "shapes")
    finally:
        first.cleanup()
        if second is not None:
            assert second.terminate() == 0, second.output()
            second.cleanup()

    assert [m["frame"] for _, m in done if "frame" in m] == list(range(FRAMES))  # resumed, nothing lost
    earlier, later = track_ids(before), track_ids(done[len(before):])
    assert earlier and later, (earlier, later)
    # No id of the first worker is given again by the second: its new tracks start after them.
    assert min(later) > max(earlier), f"ids restarted on the second worker: {max(earlier)} then {sorted(later)[:5]}"


def test_a_camera_book_reads_the_next_track_id_from_the_stream(redis_url, redis_client):
    book = CameraBook(redis_client, FleetKeys(), lease=3.0)
    key = "segstream:cam7"
    assert book.next_track_id("cam7") is None  # a new camera: ids from 1
    frame = lambda n, ids: {"schema": 1, "stream": "cam7", "frame": n, "pts": None, "time": 1.0, "width": 64,
                            "height": 48, "dropped": 0, "instances": [
                                {"class_id": 1, "label": "x", "score": 0.9, "box": [0, 0, 1, 1],
                                 "mask": {"size": [48, 64], "counts": "0"}, "track_id": i} for i in ids]}
    redis_client.xadd(key, {"data": json.dumps(frame(0, [3, 41]))})
    for n in range(1, 250):  # a busy scene later: older tracks only, across several pages of entries
        redis_client.xadd(key, {"data": json.dumps(frame(n, [3, 7]))})
    redis_client.xadd(key, {"data": "not json"})  # skipped, never fatal
    redis_client.xadd(key, {"data": json.dumps({"schema": 1, "stream": "cam7", "status": "ended", "since": 2.0,
                                                 "reconnects": 0})})
    assert book.next_track_id("cam7") == 42  # after 41, seen 250 entries back
