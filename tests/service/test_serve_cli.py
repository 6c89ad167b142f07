"""`segstream serve` refuses bad input with one line naming the cause (exit 2), before it loads a model."""

from __future__ import annotations

import socket

import yaml

from servers import segstream_cli


def test_a_bad_stream_in_the_config_is_one_line_naming_its_key(tmp_path, redis_url):
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": redis_url},
                                      "streams": [{"id": "cam1", "url": "rtsp://127.0.0.1:9/x"}, {"id": "cam2"}]}))
    result = segstream_cli("serve", "--config", str(config), "--http", "127.0.0.1:0", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["segstream: error: streams.1.url: Field required"]


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
    from segstream.service.command import stream_specs

    specs = stream_specs(load_config(Path(__file__).parents[2] / "configs" / "service.yaml"))
    assert [s.id for s in specs] == ["entrance", "loading-dock"]
