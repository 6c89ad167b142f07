"""The same hostile sources through every other door: `segstream run`, a config's `streams:`,
`segstream submit`, `segstream cameras add`, and jobs and cameras written straight into Redis for a
real `segstream worker` (whoever can write to Redis can craft them). Each is refused with one line
naming the cause; nothing is opened (the canary never lands), queued or stored; the worker fails the
job with its reason and keeps running, and the fleet's listings never show a secret.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from media import write_clip
from segstream.fleet.cameras import CameraBook
from segstream.fleet.jobs import JobQueue
from segstream.fleet.keys import FleetKeys
from redis_server import free_port
from servers import wait_for  # noqa: E402

SEGSTREAM = str(Path(sys.executable).with_name("segstream"))
KEYS = FleetKeys("segstream:")


def segstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([SEGSTREAM, *args], capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess, fragment: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("segstream: error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    return errors[0]


def hostile(redis_port: int, private: Path) -> dict[str, tuple[str, str]]:
    """name -> (source, what the refusal says)."""
    return {
        "crlf": (f"rtsp://127.0.0.1:{redis_port}/a\r\nSET canary 1\r\nX", "control characters"),
        "crlf-encoded": (f"rtsp://127.0.0.1:{redis_port}/a%0d%0aSET%20canary%201%0d%0aX", "control characters"),
        "gopher": (f"gopher://127.0.0.1:{redis_port}/_SET%20canary%201", "scheme 'gopher' is not allowed"),
        "file": (f"file://{private}", "file: URLs are not accepted"),
        "concat": (f"concat:{private}|{private}", "scheme 'concat' is not allowed"),
        "tcp-listen": (f"tcp://127.0.0.1:{free_port()}?listen=1", "scheme 'tcp' is not allowed"),
        "udp-listen": (f"udp://0.0.0.0:{free_port()}", "listening"),
    }


@pytest.fixture
def private(tmp_path) -> Path:
    (tmp_path / "private").mkdir()
    return write_clip(tmp_path / "private" / "secret.mp4", frames=4)


def test_segstream_run_refuses_hostile_sources_before_opening_them(redis_server, redis_url, private):
    for source, cause in hostile(redis_server.port, private).values():
        one_error_line(segstream("run", source, "--redis", redis_url, "--no-progress"), cause)
    assert not redis_server.client().exists("canary")
    assert not [k for k in redis_server.client().scan_iter("segstream:*")]


def test_segstream_run_keeps_local_files_inside_a_configured_media_root(tmp_path, redis_url, private):
    config = tmp_path / "strict.yaml"
    config.write_text(yaml.safe_dump({"sources": {"media_root": str(tmp_path / "media")}}))
    one_error_line(segstream("run", str(private), "--config", str(config), "--redis", redis_url), "outside sources.media_root")


def test_hostile_streams_in_a_config_stop_serve_before_it_starts(tmp_path, redis_server, redis_url, private):
    for name, (source, cause) in hostile(redis_server.port, private).items():
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"redis": {"url": redis_url}, "streams": [
            {"id": "fine", "url": "rtsp://10.20.0.7/live"}, {"id": "bad", "url": source}]}))
        result = segstream("serve", "--config", str(config), "--http", f"127.0.0.1:{free_port()}", timeout=60)
        error = one_error_line(result, cause)
        assert "streams.1.url" in error and "\r" not in error, error
    assert not redis_server.client().exists("canary")


def test_submit_and_cameras_add_refuse_before_anything_is_stored(redis_server, redis_url, private):
    client = redis_server.client()
    for name, (source, cause) in hostile(redis_server.port, private).items():
        if name in ("crlf", "gopher", "file", "udp-listen"):
            one_error_line(segstream("submit", source, "--stream-id", "evil", "--redis", redis_url, timeout=30), cause)
        one_error_line(segstream("cameras", "add", "evil", source, "--redis", redis_url, timeout=30), cause)
    assert not client.exists(KEYS.jobs) and not client.exists(KEYS.cameras)
    assert not client.exists("canary")


@pytest.fixture
def worker(tmp_path, redis_url):
    media = tmp_path / "media"
    media.mkdir()
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"input_size": [128, 224]}, "engine": {"threads": 1}, "redis": {"url": redis_url},
        "output": {"progress": False}, "source": {"decoder_threads": 1, "open_timeout": 2},
        "fleet": {"lease": 3.0, "heartbeat": 0.5}, "shutdown_timeout": 5,
        "sources": {"media_root": str(media)},
    }))
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen([SEGSTREAM, "worker", "--config", str(config), "--name", "w1", "--capacity", "2"],
                                   stdout=out, stderr=subprocess.STDOUT)
    process.media = media  # type: ignore[attr-defined]
    process.log = log  # type: ignore[attr-defined]
    yield process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_worker_fails_crafted_jobs_with_their_reason_refuses_crafted_cameras_and_keeps_running(
        worker, redis_server, redis_url, private):
    client = redis_server.client()
    queue = JobQueue(client, KEYS)
    crafted = {name: queue.submit(source, f"evil-{name}") for name, (source, _) in hostile(redis_server.port, private).items()}
    crafted["outside"] = queue.submit(str(private), "evil-outside")  # the worker's media root excludes it
    CameraBook(client, KEYS).add("evil-cam", f"rtsp://127.0.0.1:{redis_server.port}/a\r\nSET canary 1\r\nX")
    CameraBook(client, KEYS).add("evil-file-cam", f"file://{private}")
    good = write_clip(worker.media / "good.mp4", width=224, height=128, frames=5)
    submitted = segstream("submit", str(good), "--redis", redis_url, timeout=30)
    assert submitted.returncode == 0, submitted.stderr
    secret_url = f"https://TOKENUSER123@127.0.0.1:{free_port()}/x.mp4?token=TOK-secret99&user=me"
    assert segstream("submit", secret_url, "--stream-id", "secret-job", "--redis", redis_url, timeout=30).returncode == 0

    def record(job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in client.hgetall(KEYS.job(job_id)).items()}

    def finished() -> bool:
        states = [r.get("state") for r in (record(j) for j in crafted.values())]
        done = [json.loads(f[b"data"]) for _, f in client.xrange("segstream:good")]
        return all(s == "failed" for s in states) and any(m.get("eos") for m in done)

    wait_for(finished, 150, "the crafted jobs to fail and the good one to finish")
    causes = dict(hostile(redis_server.port, private), outside=(str(private), "outside sources.media_root"))
    for name, job_id in crafted.items():
        reason = record(job_id)["reason"]
        assert causes[name][1] in reason, (name, reason)
        assert not client.exists(f"segstream:evil-{name}"), name  # nothing published
    good_frames = [m["frame"] for _, f in client.xrange("segstream:good") if "instances" in (m := json.loads(f[b"data"]))]
    assert good_frames == list(range(5))
    wait_for(lambda: "camera evil-cam refused" in worker.log.read_text(), 20, "the camera refusal in the log")
    time.sleep(2)  # a few balancing rounds: the refusal is said once, the camera never opened
    log = worker.log.read_text()
    assert log.count("camera evil-cam refused") == 1 and "camera evil-file-cam refused" in log, log
    assert not client.exists("canary") and not client.exists("segstream:evil-cam")
    assert worker.poll() is None, log  # still running

    # Listings: the job's source and the failure reason never show the secrets.
    wait_for(lambda: any(r.get("state") == "failed" and r["stream_id"] == "secret-job"
                         for r in JobQueue(client, KEYS).records()), 60, "the secret job to fail")
    for args in (("status", "--redis", redis_url), ("status", "--json", "--redis", redis_url),
                 ("cameras", "list", "--redis", redis_url)):
        shown = segstream(*args, timeout=30)
        assert shown.returncode == 0, shown.stderr
        assert "TOK-secret99" not in shown.stdout and "TOKENUSER123" not in shown.stdout, shown.stdout
    status = json.loads(segstream("status", "--json", "--redis", redis_url, timeout=30).stdout)
    job = next(j for j in status["jobs"]["list"] if j["stream"] == "secret-job")
    assert job["source"].startswith("https://***@127.0.0.1:") and "token=***&user=me" in job["source"], job
    assert "TOK-secret99" not in worker.log.read_text() and "TOKENUSER123" not in worker.log.read_text()
    # Redis keeps the real source: the worker needs it to open the file.
    assert any(r["source"] == secret_url for r in JobQueue(client, KEYS).records())
