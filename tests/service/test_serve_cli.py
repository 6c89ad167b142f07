"""`segstream serve` refuses bad input with one line naming the cause (exit 2) before it loads a model;
`segstream run --http` serves the read-only endpoints."""

from __future__ import annotations

import socket

import pytest

from servers import segstream_cli


def test_a_bad_stream_in_the_config_is_named_by_its_key():
    from segstream.pipeline.config import ConfigError, parse_config
    from segstream.commands.serve import stream_specs

    config = parse_config({"streams": [{"id": "cam1", "url": "rtsp://127.0.0.1:9/x"}, {"id": "cam2"}]})
    with pytest.raises(ConfigError, match=r"^streams\.1\.url: Field required$"):
        stream_specs(config)
    config = parse_config({"streams": [{"id": "cam1", "url": "a.mp4"}, {"id": "cam1", "url": "b.mp4"}]})
    with pytest.raises(ConfigError, match=r"^streams\.1\.id: 'cam1' is used twice$"):
        stream_specs(config)


def test_a_taken_port_is_one_line_naming_it(redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = segstream_cli("serve", "--redis", redis_url, "--http", f"127.0.0.1:{port}", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"segstream: error: --http: cannot listen on 127.0.0.1:{port} (Address already in use)"]


def test_the_example_service_config_and_its_streams_are_valid():
    from pathlib import Path

    from segstream.pipeline.config import load_config
    from segstream.commands.serve import stream_specs

    specs = stream_specs(load_config(Path(__file__).parents[2] / "configs" / "service.yaml"))
    assert [s.id for s in specs] == ["entrance", "loading-dock"]


def test_a_cli_run_with_http_serves_the_read_only_endpoints(rtsp_server, redis_url):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    from redis_server import free_port, stop_process

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("segstream")
    run = subprocess.Popen([str(exe), "run", rtsp_server.url, "--stream-id", "cam", "--redis", redis_url,
                            "--input-size", "128x224", "--no-progress", "--http", f"127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))

    def get(path: str, method: str = "GET") -> tuple[int, bytes]:
        request = urllib.request.Request(base + path, method=method, data=b"{}" if method == "POST" else None,
                                         headers={"Content-Type": "application/json"} if method == "POST" else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    try:
        deadline = time.monotonic() + 120
        streams: list = []
        while time.monotonic() < deadline and not (streams and streams[0]["frames_published"] > 0):
            assert run.poll() is None, run.stderr.read()
            try:
                status, body = get("/streams")
                streams = json.loads(body) if status == 200 else []
            except OSError:
                pass
            time.sleep(0.5)
        assert [s["id"] for s in streams] == ["cam"] and streams[0]["frames_published"] > 0
        assert get("/streams", "POST")[0] == 405  # a CLI run's streams come from its command line
        assert get("/streams/cam", "DELETE")[0] == 405
        assert get("/readyz")[0] == 200
        assert b'segstream_frames_published_total{stream="cam"}' in get("/metrics")[1]
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        stop_process(run)
