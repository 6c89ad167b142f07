"""Live operation in the real world: cameras that come and go or stall, several cameras and files
in one run, Redis killed mid-run, failing batches, passwords in URLs. Real RTSP servers and a real
redis-server are killed and restarted; time constants are shortened through the config."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from live_helpers import RunInThread, SlowEngine, all_entries, frames_of, publish_times, statuses_of, wait_for
from media import write_clip
from servers import RtspServer, segstream_cli
from segstream.pipeline.stages.faults import StageFailed
from redis_server import PrivateRedis, free_port
from segstream.pipeline.run import run

QUICK = {"stall_timeout": 2.0, "backoff_initial": 0.2, "backoff_max": 1.0, "open_timeout": 2.0}


@pytest.fixture
def live_config(fast_config):
    for key, value in QUICK.items():
        setattr(fast_config.source, key, value)
    fast_config.shutdown_timeout = 10
    return fast_config


def test_a_camera_restarted_three_times_rejoins_each_time_and_numbering_continues(live_config, redis_client):
    port = free_port()
    server = RtspServer(port=port, fps=15).start()
    key = "segstream:cam"
    delays = []
    try:
        with RunInThread([server.url], live_config, engine=SlowEngine(0.005), stream_ids=["cam"]) as running:
            wait_for(lambda: len(frames_of(redis_client, key)) >= 10, 30, "first frames")
            for _ in range(3):
                server.stop()
                wait_for(lambda: running.pipeline.registry.get("cam").state == "reconnecting", 10, "reconnecting")
                time.sleep(1.0)
                before = len(frames_of(redis_client, key))
                server = RtspServer(port=port, fps=15).start()
                back = time.monotonic()
                wait_for(lambda: len(frames_of(redis_client, key)) > before + 3, 20, "frames after the restart")
                delays.append(time.monotonic() - back)
            summary = running.stop()
    finally:
        server.stop()
    indices = [m["frame"] for m in frames_of(redis_client, key)]
    assert indices == sorted(set(indices)), "numbering continues across reconnects, no repeats"
    assert summary.streams["cam"].reconnects == 3
    assert max(delays) < QUICK["backoff_max"] + 2 + 1, delays
    states = statuses_of(redis_client, key)
    assert states[:2] == ["connecting", "live"] and states.count("reconnecting") == 3 and states[-1] == "ended", states


def test_a_camera_dark_long_rejoins_while_the_other_never_pauses(live_config, redis_client):
    steady, flaky_port = RtspServer(fps=15).start(), free_port()
    flaky = RtspServer(port=flaky_port, fps=15).start()
    try:
        with RunInThread([steady.url, flaky.url], live_config, engine=SlowEngine(0.005),
                         stream_ids=["steady", "flaky"]) as running:
            wait_for(lambda: len(frames_of(redis_client, "segstream:flaky")) >= 5, 30, "both cameras")
            flaky.stop()
            dark_from = time.time()
            time.sleep(8)  # stands for 90 s: many backoff rounds at backoff_max
            assert running.pipeline.registry.get("flaky").state == "reconnecting"
            flaky = RtspServer(port=flaky_port, fps=15).start()
            back = time.time()
            wait_for(lambda: frames_of(redis_client, "segstream:flaky")[-1]["time"] > back, 20, "the dark camera")
            rejoin = time.time() - back
            running.stop()
    finally:
        steady.stop()
        flaky.stop()
    times = [t for t in publish_times(redis_client, "segstream:steady") if t > dark_from - 1]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 2.0, f"the steady camera paused {max(gaps):.2f} s"
    assert rejoin <= QUICK["backoff_max"] + 2 + 1
    assert "reconnecting" in statuses_of(redis_client, "segstream:flaky")
    assert "steady" not in str(statuses_of(redis_client, "segstream:steady")[1:-1]), "the steady camera stayed live"


def test_a_camera_unreachable_at_start_is_retried_while_the_other_runs(live_config, redis_client):
    port = free_port()
    present = RtspServer(fps=15).start()
    late = None
    try:
        with RunInThread([present.url, f"rtsp://127.0.0.1:{port}/cam"], live_config, engine=SlowEngine(0.005),
                         stream_ids=["present", "late"]) as running:
            wait_for(lambda: len(frames_of(redis_client, "segstream:present")) >= 10, 30, "the present camera")
            assert running.pipeline.registry.get("late").state == "reconnecting"
            late = RtspServer(port=port, fps=15).start()
            wait_for(lambda: len(frames_of(redis_client, "segstream:late")) >= 5, 20, "the late camera")
            running.stop()
    finally:
        present.stop()
        if late:
            late.stop()
    late_states = statuses_of(redis_client, "segstream:late")
    assert late_states[:3] == ["connecting", "reconnecting", "live"], late_states


def test_a_single_unreachable_camera_fails_fast_unless_keep_trying(redis_url, redis_client, tmp_path):
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/cam"
    config = tmp_path / "quick.yaml"
    config.write_text("model:\n  input_size: [128, 224]\noutput:\n  progress: false\n"
                      "source:\n  open_timeout: 2\n  backoff_max: 1\n")
    exe = Path(sys.executable).with_name("segstream")
    process = subprocess.Popen([str(exe), "run", url, "--config", str(config), "--redis", redis_url,
                                "--stream-id", "cam", "--keep-trying"], stderr=subprocess.PIPE, text=True)
    server = None
    try:
        wait_for(lambda: "reconnecting" in statuses_of(redis_client, "segstream:cam") or process.poll() is not None,
                 90, "the run to retry the camera")
        time.sleep(2)
        assert process.poll() is None, "with --keep-trying the run waits for the camera"
        server = RtspServer(port=port, fps=15).start()
        wait_for(lambda: len(frames_of(redis_client, "segstream:cam")) >= 3, 60, "frames once the camera is up")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        if server:
            server.stop()
    assert process.returncode == 0, stderr
    assert stderr.count("retrying in the background") == 1, "logged once, not per retry"


def test_a_stalled_camera_server_is_detected_and_rejoined(live_config, redis_client):
    server = RtspServer(fps=15).start()
    try:
        with RunInThread([server.url], live_config, engine=SlowEngine(0.005), stream_ids=["cam"]) as running:
            wait_for(lambda: len(frames_of(redis_client, "segstream:cam")) >= 5, 30, "first frames")
            server.process.send_signal(signal.SIGSTOP)  # alive, connection open, sending nothing
            wait_for(lambda: running.pipeline.registry.get("cam").state == "reconnecting",
                     QUICK["stall_timeout"] + 5, "the stall to be noticed")
            server.process.send_signal(signal.SIGCONT)
            resumed = time.time()
            wait_for(lambda: frames_of(redis_client, "segstream:cam")[-1]["time"] > resumed, 30, "frames after SIGCONT")
            running.stop()
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()
    assert "reconnecting" in statuses_of(redis_client, "segstream:cam")


def test_redis_killed_and_restarted_mid_file_loses_and_repeats_nothing(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", frames=120)
    config = tmp_path / "fast.yaml"
    config.write_text("model:\n  input_size: [128, 224]\noutput:\n  progress: false\nredis:\n  backoff_max: 1\n")
    server = PrivateRedis(appendonly=True)
    url = server.start()
    exe = Path(sys.executable).with_name("segstream")
    try:
        process = subprocess.Popen([str(exe), "run", str(clip), "--config", str(config), "--redis", url],
                                   stderr=subprocess.PIPE, text=True)
        client = server.client()
        wait_for(lambda: client.xlen("segstream:long") >= 20, 60, "20 frames")
        server.kill()
        time.sleep(3)
        server.restart()
        _, stderr = process.communicate(timeout=120)
        entries = all_entries(server.client(), "segstream:long")
    finally:
        server.stop()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "unreachable" in stderr
    frames = [m["frame"] for m in entries if "frame" in m]
    assert frames == list(range(120)), "every frame once, in order"
    assert [m for m in entries if m.get("eos")] == [entries[-1]] and entries[-1]["frames"] == 120


def test_redis_down_during_a_camera_run_drops_are_counted_and_publishing_resumes(live_config):
    server = PrivateRedis(appendonly=True)
    live_config.redis.url = server.start()
    live_config.redis.outbox = 5
    live_config.redis.backoff_max = 1
    camera = RtspServer(fps=15).start()
    try:
        with RunInThread([camera.url], live_config, engine=SlowEngine(0.005), stream_ids=["cam"]) as running:
            client = server.client()
            wait_for(lambda: client.xlen("segstream:cam") >= 10, 30, "first frames")
            server.kill()
            wait_for(lambda: not running.pipeline.redis_up, 10, "the outage to be noticed")
            time.sleep(3)
            server.restart()
            client = server.client()
            back = time.time()
            wait_for(lambda: frames_of(client, "segstream:cam")[-1]["time"] > back, 30, "frames after Redis is back")
            summary = running.stop()
        frames = frames_of(server.client(), "segstream:cam")
    finally:
        camera.stop()
        server.stop()
    indices = [m["frame"] for m in frames]
    assert indices == sorted(set(indices))
    state = summary.streams["cam"]
    assert state.dropped["outbox"] > 0, "frames beyond the outbox were dropped and counted"
    # Every decoded frame up to the last published one is either on Redis or counted as dropped.
    assert sum(m["dropped"] for m in frames) + len(frames) == indices[-1] + 1, [(m["frame"], m["dropped"]) for m in frames]


def test_a_file_in_the_same_run_never_holds_up_a_camera(tmp_path, live_config, redis_client):
    clip = write_clip(tmp_path / "film.mp4", frames=150)
    camera = RtspServer(fps=15).start()
    try:
        with RunInThread([str(clip), camera.url], live_config, engine=SlowEngine(0.03), keep_trying=True,
                         stream_ids=["film", "cam"]):
            wait_for(lambda: any(m.get("eos") for m in all_entries(redis_client, "segstream:film")), 60, "the film's end")
    finally:
        camera.stop()
    film = all_entries(redis_client, "segstream:film")
    assert [m["frame"] for m in film if "frame" in m] == list(range(150)) and film[-1]["eos"]
    cam = frames_of(redis_client, "segstream:cam")
    assert len(cam) >= 20, "the camera got its share of the engine while the film ran"
    latencies = [m["latency"] for m in cam]
    assert max(latencies[len(latencies) // 4:]) < 1.0, latencies


def test_a_fast_camera_takes_no_more_than_its_share_of_a_slow_engine(live_config, redis_client):
    fast, slow = RtspServer(fps=30).start(), RtspServer(fps=15).start()
    try:
        with RunInThread([fast.url, slow.url], live_config, engine=SlowEngine(0.1), stream_ids=["fast", "slow"]):
            wait_for(lambda: len(frames_of(redis_client, "segstream:fast")) >= 40, 60, "40 frames")
    finally:
        fast.stop()
        slow.stop()
    n_fast, n_slow = len(frames_of(redis_client, "segstream:fast")), len(frames_of(redis_client, "segstream:slow"))
    assert n_slow >= 0.8 * n_fast, f"fast {n_fast} vs slow {n_slow}: each saturated camera gets half the engine"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_an_https_video_is_a_file_that_ends_with_eos(tmp_path, redis_url, redis_client):
    folder = tmp_path / "www"
    folder.mkdir()
    write_clip(folder / "remote.mp4", frames=12)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}/remote.mp4"
        result = segstream_cli("run", url, "--redis", redis_url, "--input-size", "128x224", "--no-progress", timeout=120)
    finally:
        httpd.shutdown()
    assert result.returncode == 0, result.stderr
    entries = all_entries(redis_client, "segstream:remote")
    assert [m["frame"] for m in entries if "frame" in m] == list(range(12))
    assert entries[-1] == {"schema": 1, "stream": "remote", "eos": True, "frames": 12}


def test_a_camera_password_never_appears_in_logs_or_entries(tmp_path, redis_url, redis_client):
    port = free_port()
    server = RtspServer(port=port, fps=15).start()
    url = f"rtsp://viewer:Sup3rS3cret@127.0.0.1:{port}/cam"
    config = tmp_path / "quick.yaml"
    config.write_text("model:\n  input_size: [128, 224]\noutput:\n  status_interval: 1\n"
                      "source:\n  open_timeout: 2\n  stall_timeout: 2\n  backoff_max: 1\n")
    exe = Path(sys.executable).with_name("segstream")
    process = subprocess.Popen([str(exe), "run", url, "--config", str(config), "--redis", redis_url],
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(frames_of(redis_client, "segstream:cam")) >= 3, 60, "first frames")
        server.stop()  # the loss and the retries are logged and published with the URL
        wait_for(lambda: "reconnecting" in statuses_of(redis_client, "segstream:cam"), 20, "reconnecting")
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        server.stop()
    entries = [f[b"data"].decode() for _, f in redis_client.xrange("segstream:cam")]
    status = [e for e in entries if '"status"' in e]
    assert status and all("viewer:***@" in e for e in status)
    assert "Sup3rS3cret" not in stderr and not any("Sup3rS3cret" in e for e in entries)
    assert "viewer:***@127.0.0.1" in stderr, stderr


def test_an_engine_error_on_one_batch_is_published_and_the_run_goes_on(tmp_path, live_config, redis_client):
    clip = write_clip(tmp_path / "bumpy.mp4", frames=10)
    run([str(clip)], live_config, engine=SlowEngine(0.0, fail_on=lambda call: call == 3))
    entries = all_entries(redis_client, "segstream:bumpy")
    assert [m["frame"] for m in entries if "frame" in m] == list(range(10)) and entries[-1]["eos"]
    failed = [m for m in entries if "error" in m]
    assert [m["frame"] for m in failed] == [2] and failed[0]["instances"] == []
    assert "illegal memory access" in failed[0]["error"]


def test_an_engine_that_keeps_failing_stops_the_run_with_one_line(tmp_path, live_config, redis_client):
    clip = write_clip(tmp_path / "broken.mp4", frames=30)
    live_config.engine.max_consecutive_errors = 3
    with pytest.raises(StageFailed, match="engine failed on 3 batches in a row"):
        run([str(clip)], live_config, engine=SlowEngine(0.0, fail_on=lambda call: True))
    failed = frames_of(redis_client, "segstream:broken")
    assert [m["frame"] for m in failed][:2] == [0, 1] and all("error" in m for m in failed), "nothing vanished silently"


def test_sigterm_exits_zero_within_the_shutdown_timeout_even_with_redis_away(tmp_path):
    server = PrivateRedis(appendonly=True)
    url = server.start()
    camera = RtspServer(fps=15).start()
    config = tmp_path / "quick.yaml"
    config.write_text("model:\n  input_size: [128, 224]\noutput:\n  progress: false\nshutdown_timeout: 4\n")
    exe = Path(sys.executable).with_name("segstream")
    process = subprocess.Popen([str(exe), "run", camera.url, "--config", str(config), "--redis", url,
                                "--stream-id", "cam"], stderr=subprocess.PIPE, text=True)
    try:
        client = server.client()
        wait_for(lambda: client.xlen("segstream:cam") >= 5, 90, "first frames")
        server.kill()
        time.sleep(1)
        process.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - asked
    finally:
        if process.poll() is None:
            process.kill()
        camera.stop()
        server.stop()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert took < 4 + 3, f"took {took:.1f} s"


def test_a_second_ctrl_c_aborts_at_once_and_leaves_a_playable_video(tmp_path):
    import av

    clip = write_clip(tmp_path / "long.mp4", frames=600, width=320, height=180)
    video = tmp_path / "annotated.mp4"
    server = PrivateRedis()
    url = server.start()
    exe = Path(sys.executable).with_name("segstream")
    process = subprocess.Popen([str(exe), "run", str(clip), "--redis", url, "--input-size", "128x224",
                                "--output-video", str(video), "--no-progress"], stderr=subprocess.PIPE, text=True)
    try:
        client = server.client()
        wait_for(lambda: client.xlen("segstream:long") >= 10, 90, "first frames")
        server.kill()  # the first Ctrl-C now waits for Redis (up to shutdown_timeout, 10 s)
        process.send_signal(signal.SIGINT)
        time.sleep(1)
        process.send_signal(signal.SIGINT)
        asked = time.monotonic()
        _, stderr = process.communicate(timeout=20)
        took = time.monotonic() - asked
    finally:
        if process.poll() is None:
            process.kill()
        server.stop()
    assert "Traceback" not in stderr, stderr
    assert "interrupted" in stderr and took < 5, (took, stderr)
    assert process.returncode == 130 and "terminate called" not in stderr, (process.returncode, stderr)
    with av.open(str(video)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded >= 10, "the mp4 was closed properly"
