"""Two `segstream serve` processes on one Redis are a fleet of two (and a `segstream worker --http`
joins it): one camera book, each camera run by exactly one process, every process's GET /streams
showing every camera with the process running it, and a killed process's cameras back on another
within the lease. Real processes, a real redis-server, a real gstreamer RTSP server.

The tests run in file order, like an operator's session: the config's camera (the same id in both
serves' configs), a camera POSTed to one serve, the serve running it SIGKILLed, a worker joining.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fleet_helpers import SEGSTREAM, cli, wait_for
from redis_server import PrivateRedis, free_port, stop_process
from media import write_clip
from servers import RtspServer, json_request

LEASE = 3.0
PREFIX = "segstream:"


@dataclass
class Process:
    name: str
    process: subprocess.Popen
    port: int
    log: Path

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return json_request(f"http://127.0.0.1:{self.port}{path}", method, body)

    def streams(self) -> dict[str, dict]:
        status, body = self.call("GET", "/streams")
        assert status == 200, body
        return {s["id"]: s for s in body}

    def running(self) -> set[str]:
        """The streams this process itself runs (its /status)."""
        status, body = self.call("GET", "/status")
        assert status == 200, body
        return {s["id"] for s in body["streams"] if s["state"] != "ended"}

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(command: str, name: str, config: Path, folder: Path) -> Process:
    port = free_port()
    log = folder / f"{name}.log"
    process = subprocess.Popen([SEGSTREAM, command, "--config", str(config), "--name", name,
                                "--http", f"127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=log.open("w"),
                               env={k: v for k, v in os.environ.items() if k != "SEGSTREAM_TOKEN"})
    return Process(name, process, port, log)


def ready(proc: Process) -> bool:
    assert proc.process.poll() is None, f"{proc.name} exited {proc.process.returncode}:\n{proc.output()}"
    try:
        return proc.call("GET", "/readyz")[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def cameras():
    server = RtspServer(width=224, height=128, fps=10)
    server.args += ["--mounts", "2"]  # /cam1 (the config's) and /cam2 (POSTed)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, cameras):
    folder = tmp_path_factory.mktemp("serve-fleet")
    redis = PrivateRedis()
    redis.start()
    config = {
        "model": {"input_size": [128, 224], "score_threshold": 0.3},
        "engine": {"threads": 1, "batch_size": 2},
        "redis": {"url": redis.url, "prefix": PREFIX},
        "output": {"progress": False},
        "source": {"open_timeout": 2, "stall_timeout": 3, "decoder_threads": 1},
        "fleet": {"lease": LEASE, "heartbeat": 0.5, "capacity": 2},
        "shutdown_timeout": 5,
        "sources": {"media_root": str(folder)},  # files over the API: from here only
        # the same camera id in both serves' configs: one camera of the book, run once
        "streams": [{"id": "door", "url": f"rtsp://127.0.0.1:{cameras.port}/cam1"}],
    }
    write_clip(folder / "clip.mp4", width=224, height=128, frames=40)
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    procs = {name: start("serve", name, path, folder) for name in ("a", "b")}
    state = {"redis": redis, "config": path, "folder": folder, "procs": procs, "camera": cameras}
    try:
        wait_for(lambda: all(ready(p) for p in procs.values()), 180, "both serves to be ready")
        yield state
    finally:
        for proc in state["procs"].values():
            stop_process(proc.process)
        redis.stop()


def owner_of(fleet: dict, camera: str) -> str | None:
    value = fleet["redis"].client().get(f"{PREFIX}fleet:camera:{camera}:owner")
    return value.decode() if value else None


def frames(client, stream: str, after: str = "-") -> list[tuple[str, dict]]:
    start = f"({after}" if after != "-" else "-"
    out = []
    for entry_id, fields in client.xrange(f"{PREFIX}{stream}", start, "+"):
        message = json.loads(fields[b"data"])
        if "frame" in message and "instances" in message:
            out.append((entry_id.decode(), message))
    return out


def test_the_same_camera_in_two_serves_configs_runs_once(fleet):
    a, b = fleet["procs"]["a"], fleet["procs"]["b"]
    client = fleet["redis"].client()
    wait_for(lambda: len(frames(client, "door")) >= 3, 90, "the config's camera to publish")
    assert client.hkeys(f"{PREFIX}fleet:cameras") == [b"door"]
    time.sleep(2 * 0.5 + 0.5)  # two heartbeats: a second runner would show by now
    runners = [p.name for p in (a, b) if "door" in p.running()]
    assert runners == [owner_of(fleet, "door")], runners
    for proc in (a, b):  # every process lists it, with the process running it
        listed = proc.streams()["door"]
        assert listed["worker"] == runners[0] and listed["state"] == "live", listed
    numbers = [m["frame"] for _, m in frames(client, "door")]
    assert numbers == sorted(set(numbers)), "two processes published the same camera"


def test_a_camera_posted_to_one_serve_is_picked_up_within_2_s_and_run_by_exactly_one(fleet):
    a, b = fleet["procs"]["a"], fleet["procs"]["b"]
    client = fleet["redis"].client()
    posted = time.time()
    status, body = a.call("POST", "/streams", {"id": "yard", "url": f"rtsp://127.0.0.1:{fleet['camera'].port}/cam2"})
    assert status == 201, body
    # its first connection attempt: the `connecting` status entry on its stream
    first = wait_for(lambda: client.xrange(f"{PREFIX}yard", count=1), 10, "yard's first status entry")
    entry_id, fields = first[0]
    assert json.loads(fields[b"data"])["status"] == "connecting"
    assert int(entry_id.decode().split("-")[0]) / 1000 - posted < 2.0
    wait_for(lambda: len(frames(client, "yard")) >= 3, 60, "yard to publish")
    owner = owner_of(fleet, "yard")
    assert owner in ("a", "b")
    time.sleep(1.0)
    assert [p.name for p in (a, b) if "yard" in p.running()] == [owner]

    def listed_everywhere() -> bool:
        return all(p.streams().get("yard", {}).get("worker") == owner for p in (a, b))

    wait_for(listed_everywhere, 5, "GET /streams of both serves to show yard on its owner")
    listing = cli("cameras", "list", "--redis", fleet["redis"].url)
    assert f"owner {owner}" in next(line for line in listing.stdout.splitlines() if line.startswith("yard")), listing.stdout
    status = json.loads(cli("status", "--redis", fleet["redis"].url, "--lease", str(LEASE), "--json").stdout)
    assert {c["id"]: c["owner"] for c in status["cameras"]}["yard"] == owner
    assert {c["id"]: c["state"] for c in status["cameras"]}["yard"] == a.streams()["yard"]["state"] == "live"
    # a second POST of the same id is refused on either serve
    for proc in (a, b):
        assert proc.call("POST", "/streams", {"id": "yard", "url": "rtsp://127.0.0.1:9/x"})[0] == 409


def test_a_file_posted_to_one_serve_runs_there_and_only_there_it_is_deleted(fleet):
    a, b = fleet["procs"]["a"], fleet["procs"]["b"]
    status, body = a.call("POST", "/streams", {"id": "clip", "url": str(fleet["folder"] / "clip.mp4")})
    assert status == 201 and body["worker"] == "a", body
    assert not fleet["redis"].client().hexists(f"{PREFIX}fleet:cameras", "clip")  # local: not in the book
    wait_for(lambda: b.streams().get("clip", {}).get("worker") == "a", 10, "the other serve to list the file on a")
    status, body = b.call("DELETE", "/streams/clip")
    assert status == 409 and body["worker"] == "a", body
    status, body = a.call("DELETE", "/streams/clip")
    assert status == 200 and body["id"] == "clip", body
    wait_for(lambda: "clip" not in b.streams(), 10, "the file to leave every listing")


def test_sigkill_the_serve_running_a_camera_and_the_other_publishes_it_within_the_lease(fleet):
    procs = fleet["procs"]
    client = fleet["redis"].client()
    victim = procs[owner_of(fleet, "yard")]
    survivor = procs["b" if victim.name == "a" else "a"]
    mark = frames(client, "yard")[-1][0]
    killed = time.time()
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    again = wait_for(lambda: frames(client, "yard", after=mark), LEASE + 30, "the survivor to publish yard")
    assert int(again[0][0].split("-")[0]) / 1000 - killed < LEASE + 5
    assert owner_of(fleet, "yard") == survivor.name
    wait_for(lambda: {s["worker"] for s in survivor.streams().values()} == {survivor.name}, 10,
             "the survivor to list every camera as its own")
    del procs[victim.name]


def test_a_worker_with_http_serves_metrics_with_its_name_and_has_no_write_api(fleet):
    worker = start("worker", "w", fleet["config"], fleet["folder"])
    fleet["procs"]["w"] = worker
    wait_for(lambda: ready(worker), 180, "the worker to be ready")

    def published_by_worker() -> dict[str, float]:
        status, text = worker.call("GET", "/metrics")
        assert status == 200, text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return {s.labels["stream"]: s.value for s in families["segstream_frames_published"].samples
                if s.name == "segstream_frames_published_total" and s.labels.get("worker") == "w" and s.value > 0}

    # the survivor holds two cameras, more than its share now: one moves to the worker
    moved = wait_for(published_by_worker, 60, "a camera to move to the worker and publish there")
    assert set(moved) <= {"door", "yard"}
    assert {s["id"]: s["worker"] for s in worker.streams().values()}[next(iter(moved))] == "w"
    status, body = worker.call("POST", "/streams", {"id": "gate", "url": "rtsp://127.0.0.1:9/gate"})
    assert status == 405 and "segstream worker" in body["error"], body
    status, body = worker.call("DELETE", "/streams/door")
    assert status == 405 and "write API" in body["error"], body
    assert worker.call("GET", "/livez")[0] == 200
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(60) == 0, worker.output()
