"""Live cameras: latency stays bounded when the model is slower than the camera, drops are
counted exactly, the feed is re-joined after it drops, and Ctrl-C drains and exits cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from servers import RtspServer, segstream_cli
from segstream.engines.models import placeholder_config
from segstream.engines.protocol import Detections
from segstream.pipeline.run import run
from redis_server import free_port
from servers import wait_for  # noqa: E402


class SlowEngine:
    """A deliberately slow engine (finds nothing): the camera outpaces it ~5 to 1."""

    name = "slow"

    def __init__(self, delay: float) -> None:
        self.config = placeholder_config("shapes").replace(input_size=(128, 224))
        self.device = torch.device("cpu")
        self.max_batch = 1
        self.delay = delay

    def infer(self, images, image_sizes):
        time.sleep(self.delay)
        empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 28, 28))
        return [empty for _ in range(images.shape[0])]


def entries(client, key: str) -> list[dict]:
    """The frame entries of a stream (status entries left out)."""
    return [m for m in all_entries(client, key) if "frame" in m]


def all_entries(client, key: str) -> list[dict]:
    return [json.loads(f[b"data"]) for _, f in client.xrange(key)]


def test_slow_engine_drops_oldest_frames_counts_them_and_keeps_latency_bounded(rtsp_server, fast_config, redis_client):
    fast_config.source.max_frames = 90
    summary = run([rtsp_server.url], fast_config, engine=SlowEngine(0.15), stream_ids=["cam"])
    published = entries(redis_client, "segstream:cam")
    indices = [m["frame"] for m in published]
    assert indices == sorted(set(indices)), "in order, each at most once"
    assert 5 <= len(published) < 60, "the engine is far slower than the camera: most frames dropped"
    # Every decoded frame is either published or counted in the next message's "dropped".
    assert sum(m["dropped"] for m in published) + len(published) == indices[-1] + 1 == 90
    assert summary.streams["cam"].dropped_total == sum(m["dropped"] for m in published) > 0
    assert not any(m.get("eos") for m in published), "a camera has no end of stream"
    # Two waiting frames and one in the engine: latency stays near 3 engine calls, not growing.
    latencies = [m["latency"] for m in published]
    assert max(latencies[len(latencies) // 2 :]) < 1.2, latencies


def test_camera_feed_that_drops_is_rejoined(fast_config, redis_client):
    port = free_port()
    server = RtspServer(port=port).start()
    chains = []
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(summary=run([server.url], fast_config, stream_ids=["cam"], engine=SlowEngine(0.01),
                                                 on_start=chains.append)),
    )
    worker.start()
    try:
        wait_for(lambda: redis_client.xlen("segstream:cam") >= 20, 30)
        server.stop()
        time.sleep(1.5)
        before = redis_client.xlen("segstream:cam")
        server = RtspServer(port=port).start()
        wait_for(lambda: redis_client.xlen("segstream:cam") >= before + 20, 40)
    finally:
        if chains:
            chains[0].stop()
        worker.join(30)
        server.stop()
    assert not worker.is_alive()
    summary = result["summary"]
    assert summary.source_errors == []
    indices = [m["frame"] for m in entries(redis_client, "segstream:cam")]
    assert indices == sorted(set(indices)), "frame numbering continues across the reconnect"


def test_unreachable_camera_is_one_error_line_and_nonzero_exit(redis_url):
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    started = time.monotonic()
    result = segstream_cli("run", url, "--redis", redis_url, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot open camera" in lines[0], result.stderr
    assert time.monotonic() - started < 30


def test_ctrl_c_on_a_live_run_drains_publishes_and_exits_zero(tmp_path, rtsp_server, redis_url, redis_client):
    config = tmp_path / "cam.yaml"
    config.write_text("model:\n  input_size: [128, 224]\noutput:\n  progress: false\n")
    exe = Path(sys.executable).with_name("segstream")
    process = subprocess.Popen([str(exe), "run", rtsp_server.url, "--config", str(config), "--redis", redis_url,
                                "--stream-id", "cam"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: redis_client.xlen("segstream:cam") >= 5, 90)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    published = entries(redis_client, "segstream:cam")
    assert f"cam: {len(published)} frames published" in stderr


