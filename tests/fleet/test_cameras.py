"""Cameras over two worker processes: a dead worker's cameras come back on the other one, and a
worker paused past its lease publishes nothing more for the cameras it lost."""

from __future__ import annotations

import signal
import time

import pytest

from fleet_helpers import WorkerProcess, cli, entries, wait_for, write_config
from segstream.fleet.cameras import CameraBook
from segstream.fleet.keys import FleetKeys
from servers import RtspServer

LEASE = 3.0
CAMERAS = ["cam1", "cam2", "cam3", "cam4"]


@pytest.fixture
def camera_servers():
    """One RTSP server per camera: a camera's clients come and go as it moves between workers."""
    servers = []
    try:
        for _ in CAMERAS:
            servers.append(RtspServer(width=224, height=128, fps=10).start())
        yield dict(zip(CAMERAS, servers))
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.cleanup()


def owners(redis_client) -> dict[str, str | None]:
    values = redis_client.mget([f"segstream:fleet:camera:{c}:owner" for c in CAMERAS])
    return {c: (v.decode() if v else None) for c, v in zip(CAMERAS, values)}


def newest_id(redis_client, camera: str) -> str:
    newest = redis_client.xrevrange(f"segstream:{camera}", count=1)
    return newest[0][0].decode() if newest else "0-0"


def frame_numbers(redis_client, camera: str) -> list[int]:
    return [m["frame"] for _, m in entries(redis_client, camera) if "frame" in m]


def strictly_increasing(numbers: list[int]) -> bool:
    return all(a < b for a, b in zip(numbers, numbers[1:]))


def publishing_again(redis_client, cameras: list[str], after: dict[str, str], owner: str) -> dict[str, float] | None:
    """Unix time of the first frame entry after `after[camera]` on each camera, once all have one
    and `owner` holds them; None before."""
    firsts = {}
    current = owners(redis_client)
    for camera in cameras:
        if current[camera] != owner:
            return None
        later = redis_client.xrange(f"segstream:{camera}", f"({after[camera]}", "+")
        frame_ids = [i.decode() for i, f in later if b'"frame"' in f[b"data"]]
        if not frame_ids:
            return None
        firsts[camera] = int(frame_ids[0].split("-")[0]) / 1000
    return firsts


def test_cameras_move_to_the_surviving_worker_and_a_paused_worker_cannot_publish(
        tmp_path, redis_url, redis_client, camera_servers, workers):
    config = write_config(tmp_path, redis_url, lease=LEASE)
    added = cli("cameras", "add", "cam1", camera_servers["cam1"].url, "--redis", redis_url)
    assert added.returncode == 0 and "added camera cam1" in added.stdout, added.stderr
    book = CameraBook(redis_client, FleetKeys())
    for camera in CAMERAS[1:]:
        book.add(camera, camera_servers[camera].url)
    a = WorkerProcess(config, "a", capacity=2, log_dir=tmp_path)
    b = WorkerProcess(config, "b", capacity=2, log_dir=tmp_path)
    workers.extend([a, b])
    wait_for(lambda: a.ready(redis_client) and b.ready(redis_client), 120, "both workers to load their engine")

    def split_and_publishing():
        current = owners(redis_client)
        held = sorted(current.values(), key=str)
        return held == ["a", "a", "b", "b"] and all(len(frame_numbers(redis_client, c)) >= 3 for c in CAMERAS)

    wait_for(split_and_publishing, 90, "the four cameras split two and two and publishing")
    listed = cli("cameras", "list", "--redis", redis_url)
    assert listed.stdout.count("owner a") == 2 and listed.stdout.count("owner b") == 2, listed.stdout

    # A pauses past its lease: its cameras move to B, and what A still held is never published.
    lost = [c for c, o in owners(redis_client).items() if o == "a"]
    marks = {c: newest_id(redis_client, c) for c in lost}
    paused_at = time.time()
    a.signal(signal.SIGSTOP)
    firsts = wait_for(lambda: publishing_again(redis_client, lost, marks, "b"), LEASE + 30,
                      "B to publish the paused worker's cameras")
    assert max(firsts.values()) - paused_at < LEASE + 10
    a.signal(signal.SIGCONT)
    wait_for(lambda: "taken over by another worker" in a.output(), 20, "A to notice it lost its cameras")
    time.sleep(2)
    assert a.process.poll() is None  # A lives on and may take cameras again (new leases, new tokens)
    for camera in CAMERAS:
        numbers = frame_numbers(redis_client, camera)
        assert strictly_increasing(numbers), f"{camera}: a stale owner published {numbers}"

    # Balanced again (A gets its share back), then A is killed: its cameras come back on B.
    wait_for(split_and_publishing, 60, "the cameras to rebalance two and two")
    lost = [c for c, o in owners(redis_client).items() if o == "a"]
    marks = {c: newest_id(redis_client, c) for c in lost}
    killed_at = time.time()
    a.signal(signal.SIGKILL)
    firsts = wait_for(lambda: publishing_again(redis_client, lost, marks, "b"), LEASE + 30,
                      "B to publish the killed worker's cameras")
    assert max(firsts.values()) - killed_at < LEASE + 10
    for camera in CAMERAS:
        assert strictly_increasing(frame_numbers(redis_client, camera)), camera

    status = cli("status", "--redis", redis_url, "--lease", str(LEASE))
    assert "workers: 1 alive" in status.stdout, status.stdout
    assert status.stdout.count("owner b") == 4, status.stdout

    assert b.terminate() == 0, b.output()
    statuses = [m.get("status") for _, m in entries(redis_client, "cam1")]
    assert statuses[-1] == "ended"  # a stopping worker lets its cameras say so before it goes
