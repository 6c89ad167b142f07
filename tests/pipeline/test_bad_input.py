"""Bad input gets one clear line on stderr and a non-zero exit: never a traceback, never a hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from servers import segstream_cli
from media import count_decodable_frames, write_clip
from segstream.engines.checkpoint import save_checkpoint
from segstream.engines.models import build_network, placeholder_config
from redis_server import free_port

FAST = "model:\n  input_size: [128, 224]\noutput:\n  progress: false\n"


def one_error_line(result, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("segstream: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def fast_yaml(tmp_path) -> str:
    path = tmp_path / "fast.yaml"
    path.write_text(FAST)
    return str(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", frames=10)


def test_missing_file(redis_url):
    one_error_line(segstream_cli("run", "/nonexistent/video.mp4", "--redis", redis_url), "not found", "/nonexistent/video.mp4")


def test_file_that_is_not_a_video(tmp_path, redis_url):
    path = tmp_path / "notes.mp4"
    path.write_text("these are not the frames you are looking for\n" * 50)
    one_error_line(segstream_cli("run", str(path), "--redis", redis_url), "cannot read", "as a video")


def test_truncated_mp4_without_its_index(tmp_path, clip, redis_url):
    data = clip.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])  # libx264 mp4s keep their index (moov) at the end
    one_error_line(segstream_cli("run", str(path), "--redis", redis_url), "cut.mp4")


def test_truncated_stream_publishes_what_decoded_then_fails(tmp_path, fast_yaml, redis_url, redis_client):
    full = write_clip(tmp_path / "full.mkv", frames=30)
    data = full.read_bytes()
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[: int(len(data) * 0.6)])
    result = segstream_cli("run", str(path), "--config", fast_yaml, "--redis", redis_url)
    one_error_line(result, "truncated", "cut.mkv")
    published = [json.loads(f[b"data"]) for _, f in redis_client.xrange("segstream:cut")]
    decoded = published[-1]["frames"]
    assert 0 < decoded < 30
    assert [m["frame"] for m in published[:-1]] == list(range(decoded)), "nothing already decoded is lost"
    assert published[-1]["eos"] and published[-1]["interrupted"]


def test_corrupt_frame_in_the_middle_is_skipped_and_counted(tmp_path, fast_yaml, redis_url, redis_client):
    path = write_clip(tmp_path / "mj.avi", "mjpeg-avi", frames=12)
    data = bytearray(path.read_bytes())
    # Zero the head of the 6th JPEG (its SOI marker and tables) so that frame cannot decode.
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[5] : starts[5] + 600] = bytes(600)
    path.write_bytes(bytes(data))
    decodable = count_decodable_frames(path)
    assert decodable == 11
    result = segstream_cli("run", str(path), "--config", fast_yaml, "--redis", redis_url)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 corrupt" in result.stderr
    published = [json.loads(f[b"data"]) for _, f in redis_client.xrange("segstream:mj")]
    assert len(published) == decodable + 1 and published[-1] == {"schema": 1, "stream": "mj", "eos": True, "frames": 11}


def test_unreachable_redis(clip):
    one_error_line(segstream_cli("run", str(clip), "--redis", f"redis://127.0.0.1:{free_port()}/0"), "cannot reach Redis")


def test_redis_url_with_a_bad_scheme(clip):
    one_error_line(segstream_cli("run", str(clip), "--redis", "http://localhost:6379"), "redis.url")


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        ("engine:\n  batchsize: 2\n", ("engine.batchsize", "unknown key")),
        ("engine:\n  batch_size: 0\n", ("engine.batch_size", "greater than or equal to 1")),
        ("model:\n  input_size: [100, 200]\n", ("model.input_size", "multiples of 32")),
        ("engine: [1, 2\n", ("not valid YAML",)),
        ("camera: {}\n", ("camera", "unknown key")),
    ],
)
def test_bad_config_names_the_key(tmp_path, clip, redis_url, yaml_text, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    one_error_line(segstream_cli("run", str(clip), "--config", str(path), "--redis", redis_url), *fragments)


def test_missing_config_file(clip, redis_url):
    one_error_line(segstream_cli("run", str(clip), "--config", "/nope.yaml", "--redis", redis_url), "config file not found")


def test_checkpoint_that_is_not_safetensors(tmp_path, clip, redis_url):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x80\x04 pickle or garbage" * 10)
    one_error_line(segstream_cli("run", str(clip), "--model", str(path), "--redis", redis_url), "not a readable safetensors")


def test_tampered_checkpoint_is_rejected(tmp_path, clip, redis_url):
    config = placeholder_config("shapes")
    path = save_checkpoint(tmp_path / "model.safetensors", build_network(config).state_dict(), config)
    data = bytearray(path.read_bytes())
    data[-64:-32] = bytes(32)  # alter weight bytes, leave the header intact
    path.write_bytes(bytes(data))
    one_error_line(segstream_cli("run", str(clip), "--model", str(path), "--redis", redis_url), "integrity check")


def test_unknown_model_name(clip, redis_url):
    one_error_line(segstream_cli("run", str(clip), "--model", "yolo", "--redis", redis_url), "unknown model 'yolo'")


def test_preset_without_weights_offline_says_where_to_put_them(tmp_path, clip, redis_url):
    path = tmp_path / "offline.yaml"
    path.write_text("model:\n  name: maskrcnn_resnet50_fpn\n  allow_download: false\n")
    line = one_error_line(segstream_cli("run", str(clip), "--config", str(path), "--redis", redis_url,
                                        env={"TORCH_HOME": str(tmp_path / "torch")}), "maskrcnn_resnet50_fpn")
    assert str(tmp_path / "torch") in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_requested_without_a_gpu(clip, redis_url):
    one_error_line(segstream_cli("run", str(clip), "--device", "cuda", "--redis", redis_url), "no CUDA GPU")
