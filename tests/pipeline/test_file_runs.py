"""A file run publishes every decoded frame exactly once, in order, then one EOS entry."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from servers import segstream_cli
from media import CODECS, count_decodable_frames, write_clip
from segstream.engines.models import load_model
from segstream.pipeline.stages.preprocess import Preprocess, fit_size
from segstream.pipeline.run import run
from segstream.pipeline.sources.file import VideoFileSource


def stream_entries(client, stream_id: str) -> list[dict]:
    return [json.loads(fields[b"data"]) for _, fields in client.xrange(f"segstream:{stream_id}")]


def assert_complete(entries: list[dict], stream_id: str, decoded: int, width: int, height: int) -> None:
    frames, eos = entries[:-1], entries[-1]
    assert [m["frame"] for m in frames] == list(range(decoded)), "every frame once, in order"
    assert eos == {"schema": 1, "stream": stream_id, "eos": True, "frames": decoded}
    for m in frames:
        assert m["schema"] == 1 and m["stream"] == stream_id and m["dropped"] == 0
        assert (m["width"], m["height"]) == (width, height)
        for inst in m["instances"]:
            rle = {"size": inst["mask"]["size"], "counts": inst["mask"]["counts"].encode()}
            assert coco_mask.decode(rle).shape == (height, width)


@pytest.mark.parametrize("kind", sorted(CODECS))
def test_every_codec_publishes_each_decoded_frame_once_then_eos(tmp_path, kind, fast_config, redis_client):
    path = write_clip(tmp_path / f"clip{CODECS[kind][1]}", kind, 320, 180, frames=20)
    decoded = count_decodable_frames(path)
    assert decoded == 20
    summary = run([str(path)], fast_config)
    assert summary.frames == decoded
    assert_complete(stream_entries(redis_client, "clip"), "clip", decoded, 320, 180)


def test_odd_frame_size_keeps_its_size_in_messages_and_masks(tmp_path, fast_config, redis_client):
    path = write_clip(tmp_path / "odd.mkv", "h264-mp4", 317, 239, frames=8, pix_fmt="yuv444p")
    summary = run([str(path)], fast_config)
    entries = stream_entries(redis_client, "odd")
    assert_complete(entries, "odd", 8, 317, 239)
    assert summary.instances == sum(len(m["instances"]) for m in entries[:-1])


def test_two_files_in_one_run_each_get_their_stream_and_eos(tmp_path, fast_config, redis_client):
    a = write_clip(tmp_path / "a.mp4", frames=10)
    b = write_clip(tmp_path / "b.webm", "vp9-webm", frames=7)
    run([str(a), str(b)], fast_config, stream_ids=["left", "right"])
    assert_complete(stream_entries(redis_client, "left"), "left", 10, 320, 180)
    assert_complete(stream_entries(redis_client, "right"), "right", 7, 320, 180)


def test_max_frames_stops_early_and_eos_counts_what_was_decoded(tmp_path, fast_config, redis_client):
    path = write_clip(tmp_path / "long.mp4", frames=30)
    fast_config.source.max_frames = 5
    run([str(path)], fast_config)
    assert_complete(stream_entries(redis_client, "long"), "long", 5, 320, 180)


def test_cli_run_on_640x360_h264_publishes_one_entry_per_frame_then_eos(tmp_path, redis_url, redis_client):
    """The acceptance run: default model, default input size, through the console script."""
    path = write_clip(tmp_path / "CLIP.mp4", "h264-mp4", 640, 360, frames=12)
    result = segstream_cli("run", str(path), "--redis", redis_url, "--output-video", str(tmp_path / "out.mp4"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    entries = stream_entries(redis_client, "CLIP")
    assert_complete(entries, "CLIP", count_decodable_frames(path), 640, 360)
    assert "12 frames published" in result.stderr
    assert (tmp_path / "out.mp4").stat().st_size > 0
    assert count_decodable_frames(tmp_path / "out.mp4") == 12


def test_pubsub_publishes_the_same_json_as_the_stream(tmp_path, fast_config, redis_client):
    path = write_clip(tmp_path / "ps.mp4", frames=4)
    fast_config.redis.pubsub = True
    pubsub = redis_client.pubsub()
    pubsub.subscribe("segstream:ps")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    run([str(path)], fast_config)
    received = []
    while (msg := pubsub.get_message(timeout=2)) is not None:
        received.append(json.loads(msg["data"]))
    assert received == stream_entries(redis_client, "ps")
    assert received[-1]["eos"] is True


def test_stream_is_trimmed_to_about_maxlen(tmp_path, fast_config, redis_client):
    path = write_clip(tmp_path / "trim.mp4", frames=30)
    fast_config.redis.maxlen = 5
    run([str(path)], fast_config)
    # MAXLEN ~ trims whole macro nodes only, so the length is bounded, not exact.
    assert redis_client.xlen("segstream:trim") < 31
    assert stream_entries(redis_client, "trim")[-1]["eos"] is True


def test_annotated_video_has_every_frame_and_drawn_masks(tmp_path, fast_config):
    path = write_clip(tmp_path / "draw.mp4", frames=6)
    fast_config.output.video = str(tmp_path / "annotated.mp4")
    fast_config.model.score_threshold = 0.0
    summary = run([str(path)], fast_config)
    assert summary.videos == [tmp_path / "annotated.mp4"]
    assert count_decodable_frames(tmp_path / "annotated.mp4") == 6
    import av

    with av.open(str(tmp_path / "annotated.mp4")) as c:
        drawn = next(c.decode(video=0)).to_ndarray(format="rgb24")
    with av.open(str(path)) as c:
        plain = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(drawn.astype(int) - plain.astype(int)).mean() > 1.0, "annotations visible"


def test_batched_inference_publishes_what_frame_by_frame_inference_does(tmp_path, fast_config, redis_client):
    from segstream.engines.checkpoint import save_checkpoint
    from segstream.engines.models import build_network, placeholder_config

    path = write_clip(tmp_path / "batch.mp4", frames=7)
    config = placeholder_config("shapes")
    torch.manual_seed(0)
    fast_config.model.name = str(save_checkpoint(tmp_path / "m.safetensors", build_network(config).state_dict(), config))
    fast_config.model.score_threshold = 0.0
    run([str(path)], fast_config, stream_ids=["one"])
    fast_config.engine.batch_size = 3
    run([str(path)], fast_config, stream_ids=["three"])
    one, three = stream_entries(redis_client, "one"), stream_entries(redis_client, "three")
    assert_complete(three, "three", 7, 320, 180)
    assert sum(len(m["instances"]) for m in one[:-1]) > 0
    for a, b in zip(one[:-1], three[:-1]):
        assert [i["class_id"] for i in a["instances"]] == [i["class_id"] for i in b["instances"]]
        for ia, ib in zip(a["instances"], b["instances"]):
            assert max(abs(x - y) for x, y in zip(ia["box"], ib["box"])) < 0.05


def test_frames_are_decoded_straight_to_the_engine_input_size_unless_drawn(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", "h264-mp4", 640, 360, frames=3)
    config = load_model("shapes").config
    source = VideoFileSource(str(path), "clip")
    full = next(iter(source.items(threading.Event())))
    assert full.full_frame and full.image.shape == (360, 640, 3)

    source.pixels.fit = lambda h, w: fit_size(h, w, config.input_size)
    scaled = next(iter(source.items(threading.Event())))
    size = fit_size(360, 640, config.input_size)
    assert size[0] < 360, "the bundled model runs below the source resolution"
    assert not scaled.full_frame and scaled.image.shape == (*size, 3)
    assert (scaled.height, scaled.width) == (360, 640), "frame geometry is the source's"

    # Both reach the engine as the same network input, up to the resampling filter.
    pre = Preprocess(config, torch.device("cpu"), 1)
    a, b = pre.batch([full]), pre.batch([scaled])
    scale = size[0] / 360
    assert a.image_sizes == b.image_sizes == [size] and a.scales == b.scales == [(scale, scale)]
    assert (a.images - b.images).abs().mean() < 0.05
