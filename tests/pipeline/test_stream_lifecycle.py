"""A stream's life in a long-running pipeline: its error is never lost, its state is freed when
it ends or is removed, and an ended stream stays listed (bounded) until deleted. Real parts: the
real model on the CPU, real encoded videos cut short, a real redis-server, real HTTP."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from media import scene, write_clip
from segstream.engines.protocol import Detections
from segstream.pipeline.stages.faults import StageFailed
from segstream.pipeline.messages import Frame, FrameDetections
from segstream.pipeline.stages.postprocess import Postprocess
from segstream.pipeline.stream_spec import StreamSpec
from segstream.pipeline.streaming import StreamingPipeline
from servers import wait_for  # noqa: E402


def faststart_mp4(path: Path, frames: int) -> Path:
    """A real H.264 mp4 with its index at the front, so that cutting its tail leaves frames to decode."""
    with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.pix_fmt, stream.height, stream.width = "yuv420p", 180, 320
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(scene(i, 320, 180), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def cut_mp4(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cut")
    data = faststart_mp4(folder / "full.mp4", frames=40).read_bytes()
    cut = folder / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.5)])
    return cut


@pytest.fixture
def service_pipeline(fast_config):
    fast_config.tracking.enabled = True
    pipeline = StreamingPipeline(fast_config, keep_alive=True)  # what `segstream serve` runs
    pipeline.start()
    yield pipeline
    pipeline.shutdown(5)
    pipeline.close()


def test_one_failed_batch_on_the_device_counts_as_one_failure():
    # A batch of 4 frames whose detections the device path cannot encode (masks of the wrong rank):
    # one kernel error, not four; with max_consecutive_errors 3 the run must go on.
    stage = Postprocess(["__background__", "thing"], 0.5, max_consecutive_errors=3, take=4, device_path=True)
    bad = Detections(torch.tensor([[1.0, 1.0, 20.0, 20.0]]), torch.tensor([0.9]), torch.tensor([1]), torch.rand(1, 28))
    items = [FrameDetections(Frame("s", i, None, time.time(), np.zeros((64, 64, 3), np.uint8)), bad, (1.0, 1.0))
             for i in range(4)]
    try:
        results = stage.process(items)
    except StageFailed as exc:
        pytest.fail(f"one failed batch ended the run: {exc}")
    assert [r.error is not None for r in results] == [True] * 4
    assert stage.failures.in_a_row == 1 and stage.failures.total == 1


def test_a_file_cut_short_says_truncated_in_the_log_the_api_the_eos_and_stays_listed(
        service_pipeline, cut_mp4, redis_client, caplog):
    from segstream.service.control import StreamControl
    from segstream.service.http import HttpServer

    caplog.set_level(logging.WARNING)
    service_pipeline.config.sources.media_root = str(cut_mp4.parent)  # a file over the API: under the media root
    control = StreamControl(service_pipeline)
    endpoints = HttpServer("127.0.0.1:0")
    try:
        endpoints.attach(control)
        control.add(StreamSpec(id="cut", url=str(cut_mp4)))
        state = wait_for(lambda: (s := service_pipeline.registry.get("cut")) and s.error and s.finished and s,
                         60, "the cut file's error")
        with urllib.request.urlopen(endpoints.url + "/streams", timeout=10) as response:
            listed = {s["id"]: s for s in json.loads(response.read())}
    finally:
        endpoints.close()
    gave = state.eos_frames
    assert 0 < gave < 40
    assert "truncated" in listed["cut"]["error"] and f"decoded {gave} of 40 frames" in listed["cut"]["error"]
    assert listed["cut"]["state"] == "ended"
    logged = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert logged == [f"stream cut: {state.error}"], "logged once, with its stream"
    entries = [json.loads(f[b"data"]) for _, f in redis_client.xrange("segstream:cut")]
    assert entries[-1]["eos"] and entries[-1]["frames"] == gave and "truncated" in entries[-1]["error"]
    # Its source and sink state are freed once it ended; it stays listed until deleted.
    wait_for(lambda: "cut" not in service_pipeline.sources and "cut" not in service_pipeline.redis._outboxes,
             15, "the ended stream's state to be freed")
    assert "cut" in service_pipeline.registry
    control.remove("cut")
    assert "cut" not in service_pipeline.registry and service_pipeline.chain.producer_errors == []


def test_streams_added_and_removed_over_and_over_leave_nothing_behind(service_pipeline, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=3)
    for i in range(12):
        stream_id = "again" if i % 2 else f"new{i}"  # the same id again and again, and new ones
        service_pipeline.add_stream(StreamSpec(id=stream_id, url=str(clip)))
        service_pipeline.remove_stream(stream_id, timeout=30)
    redis = service_pipeline.redis
    wait_for(lambda: not redis._outboxes and not service_pipeline._unreleased, 15, "the outboxes to be freed")
    assert service_pipeline.registry.all() == [] and service_pipeline.sources == {}
    assert service_pipeline.chain.producers() == [] and service_pipeline.chain.producer_errors == []
    assert service_pipeline.publish._last_index == {} and service_pipeline.tracking.trackers == {}
    assert service_pipeline.tracking._ids == {} and redis._trimmed == {}
    assert service_pipeline.queue_depths() == {stage.name: 0 for stage in service_pipeline.chain.stages[1:]}


def test_ended_streams_stay_listed_until_newer_ones_push_them_out(service_pipeline, tmp_path):
    service_pipeline.ended_kept = 2
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    for i in range(4):
        service_pipeline.add_stream(StreamSpec(id=f"f{i}", url=str(clip)))
        wait_for(lambda: service_pipeline.registry.get(f"f{i}").finished, 30, f"f{i} to end")
    wait_for(lambda: [s.stream_id for s in service_pipeline.registry.all()] == ["f2", "f3"], 10,
             "only the two newest ended streams to stay listed")
    assert all(s.state == "ended" and s.eos_frames == 2 for s in service_pipeline.registry.all())
    wait_for(lambda: service_pipeline.sources == {}, 10, "their sources to be freed")


def test_track_ids_continue_when_a_stream_is_added_again(service_pipeline, tmp_path, redis_client):
    clip = write_clip(tmp_path / "clip.mp4", frames=6)

    def ids() -> set[int]:
        entries = [json.loads(f[b"data"]) for _, f in redis_client.xrange("segstream:same")]
        return {inst["track_id"] for e in entries if "frame" in e for inst in e["instances"]}

    service_pipeline.add_stream(StreamSpec(id="same", url=str(clip)))
    wait_for(lambda: service_pipeline.registry.get("same").finished, 30, "the first run to end")
    first = ids()
    service_pipeline.remove_stream("same")
    redis_client.delete("segstream:same")
    service_pipeline.add_stream(StreamSpec(id="same", url=str(clip)))
    wait_for(lambda: service_pipeline.registry.get("same").finished, 30, "the second run to end")
    second = ids()
    assert first and second, "the model finds something to track in the clip"
    assert not first & second, "track ids are never reused within a stream"
