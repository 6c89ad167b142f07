"""One stream-id rule at every door: `segstream run --stream-id`, `POST /streams` on a real
`segstream serve`, a config's `streams:`, `segstream submit` and `segstream cameras add`.

Each refuses a trailing newline, an empty id, 65 characters and a slash with one line naming the
rule, and nothing is published, queued or stored.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from media import write_clip
from service_process import TOKEN, ServeProcess

SEGSTREAM = str(Path(sys.executable).with_name("segstream"))
RULE = "use 1-64 of A-Z a-z 0-9 . _ -"
BAD_IDS = {"newline": "cam\n", "empty": "", "65 characters": "c" * 65, "slash": "a/b"}


def segstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([SEGSTREAM, *args], capture_output=True, text=True, timeout=timeout)


def refused_in_one_line(result: subprocess.CompletedProcess, bad: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, (bad, result.returncode, result.stderr)
    assert lines[0].startswith("segstream: error:") and RULE in lines[0] and repr(bad[:70]) in lines[0], lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("ids") / "clip.mp4", frames=3)


@pytest.fixture(scope="module")
def service(tmp_path_factory, redis_server):
    svc = ServeProcess(tmp_path_factory.mktemp("ids-serve"), redis_server, token=TOKEN)
    svc.start()
    yield svc
    svc.stop()


def test_run_refuses_a_bad_stream_id_before_anything_is_published(clip, redis_url, redis_client):
    for bad in BAD_IDS.values():
        refused_in_one_line(segstream("run", str(clip), "--stream-id", bad, "--redis", redis_url, "--no-progress"), bad)
    assert not list(redis_client.scan_iter("segstream:*"))


def test_submit_refuses_a_bad_stream_id_and_queues_nothing(clip, redis_url, redis_client):
    for bad in BAD_IDS.values():
        refused_in_one_line(segstream("submit", str(clip), "--stream-id", bad, "--redis", redis_url), bad)
    assert not list(redis_client.scan_iter("segstream:*"))


def test_cameras_add_refuses_a_bad_camera_id_and_stores_nothing(redis_url, redis_client):
    for bad in BAD_IDS.values():
        refused_in_one_line(segstream("cameras", "add", bad, "rtsp://10.20.0.7/live", "--redis", redis_url), bad)
    assert not list(redis_client.scan_iter("segstream:*"))


def test_a_config_stream_with_a_bad_id_stops_serve_before_it_starts(tmp_path, redis_url):
    for name, bad in BAD_IDS.items():
        config = tmp_path / "bad-id.yaml"
        config.write_text(yaml.safe_dump({"redis": {"url": redis_url},
                                          "streams": [{"id": bad, "url": "rtsp://10.20.0.7/live"}]}))
        result = segstream("serve", "--config", str(config), "--http", "127.0.0.1:0", timeout=60)
        refused_in_one_line(result, bad)
        assert "streams.0.id" in result.stderr, (name, result.stderr)


def test_post_streams_refuses_a_bad_id_with_one_line_naming_the_rule(service):
    for bad in BAD_IDS.values():
        answer = service.post_json("/streams", {"id": bad, "url": "rtsp://10.20.0.7/live"})
        assert answer.status == 422, (bad, answer)
        error = answer.json()["error"]
        assert "\n" not in error and error.startswith("id: stream id ") and RULE in error, error
    assert service.stream_ids() == [] and not service.remembered()
