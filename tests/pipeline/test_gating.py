"""Motion gating: the model runs only when a stream's picture changed, and every frame is still
published, in order, with the last inferred instances on the frames the model skipped."""

from __future__ import annotations

import json
import time

import av
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from live_helpers import wait_for
from segstream.pipeline.config import parse_config
from segstream.pipeline.stages.gating import Carried, in_stream_order
from segstream.pipeline.messages import EndOfStream, Frame, StreamStatus
from segstream.pipeline.run import run
from segstream.pipeline.stream_spec import StreamSpec
from segstream.pipeline.streaming import StreamingPipeline, make_engine
from segstream.pipeline.streams import SourceCounters, StreamState
from segstream.service.metrics import PipelineCollector
from segstream.shapes.monitoring import render_monitoring_clip

FPS = 10
#: The keys of a frame entry before gating existed: with gating off, exactly these.
FRAME_KEYS = {"schema", "stream", "frame", "pts", "time", "width", "height", "dropped", "latency", "instances"}


class CountingEngine:
    """The real engine, counting the frames it is given (a gated frame must cost no engine time)."""

    def __init__(self, engine) -> None:
        self.inner = engine
        self.name, self.config, self.device = engine.name, engine.config, engine.device
        self.max_batch = getattr(engine, "max_batch", 1)
        self.frames = 0

    def infer(self, images, image_sizes):
        self.frames += images.shape[0]
        return self.inner.infer(images, image_sizes)

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


def gating_config(redis_url: str, mode: str, max_interval: float = 2.0):
    return parse_config({
        "model": {"input_size": [192, 320]},
        "engine": {"kind": "torch"},
        "redis": {"url": redis_url},
        "output": {"progress": False},
        "gating": {"mode": mode, "max_interval": max_interval},
    })


def entries(client, stream_id: str) -> list[dict]:
    return [json.loads(f[b"data"]) for _, f in client.xrange(f"segstream:{stream_id}")]


def same_instances(a: list[dict], b: list[dict]) -> bool:
    return [(i["mask"], i["box"], i.get("track_id"), i["label"], i["score"]) for i in a] == \
           [(i["mask"], i["box"], i.get("track_id"), i["label"], i["score"]) for i in b]


@pytest.fixture(scope="module")
def still_clip(tmp_path_factory):
    """6 s at 10 fps of one scene standing still, with sensor noise on every frame."""
    folder = tmp_path_factory.mktemp("still")
    render_monitoring_clip(folder / "still.mp4", folder / "still.json", seed=12, frames=60, fps=FPS,
                           motion_share=0.0, sensor_noise=3.0)
    return folder / "still.mp4"


@pytest.fixture(scope="module")
def monitoring_clip(tmp_path_factory):
    """A monitoring camera's view: objects still most of the time, moving in short bursts."""
    folder = tmp_path_factory.mktemp("monitoring")
    coco = render_monitoring_clip(folder / "watch.mp4", folder / "watch.json", seed=5, frames=80, fps=FPS,
                                  size=(320, 180))
    return folder / "watch.mp4", coco["info"]["moving"], coco


def test_a_still_noisy_scene_runs_the_model_only_every_max_interval(still_clip, redis_url, redis_client):
    config = gating_config(redis_url, "on", max_interval=1.0)
    engine = CountingEngine(make_engine(config)[0])
    summary = run([str(still_clip)], config, engine=engine)
    frames = entries(redis_client, "still")[:-1]
    inferred = [m["frame"] for m in frames if "inferred" not in m]
    # Media time is the clock: one inference a second of video, nothing in between despite the noise.
    assert inferred == [0, 10, 20, 30, 40, 50]
    assert engine.frames == 6, "a skipped frame costs no engine time"
    state = summary.streams["still"]
    assert (state.inferred, state.gated) == (6, 54)
    for m in frames:
        if m["frame"] % 10:
            assert m["inferred"] is False and m["inferred_frame"] == m["frame"] // 10 * 10


def test_moving_objects_open_the_gate_at_once_and_skipped_frames_carry_the_last_instances(
        monitoring_clip, redis_url, redis_client):
    path, moving, _ = monitoring_clip
    summary = run([str(path)], gating_config(redis_url, "on"), stream_ids=["watch"])
    all_entries = entries(redis_client, "watch")
    frames, eos = all_entries[:-1], all_entries[-1]
    # Files stay exactly-once with gating on: every frame, once, in order, then the EOS.
    assert [m["frame"] for m in frames] == list(range(len(moving)))
    assert eos == {"schema": 1, "stream": "watch", "eos": True, "frames": len(moving)}
    assert all(m["dropped"] == 0 for m in frames)
    late = [i for i, m in enumerate(frames) if moving[i] and "inferred" in m]
    assert late == [], f"frames where objects moved but the model did not run: {late}"
    carried = [m for m in frames if "inferred" in m]
    assert len(carried) >= len(moving) // 3, "most still frames are carried over"
    by_index = {m["frame"]: m for m in frames}
    for m in carried:
        source = by_index[m["inferred_frame"]]
        assert m["inferred"] is False and "inferred" not in source and source["frame"] < m["frame"]
        # The last inferred frame before it: nothing inferred in between.
        assert all("inferred" in by_index[i] for i in range(source["frame"] + 1, m["frame"]))
        assert m["instances"] and same_instances(m["instances"], source["instances"])
    state = summary.streams["watch"]
    assert state.inferred + state.gated == len(moving) and state.gated == len(carried)


def test_with_gating_off_entries_are_exactly_as_before(monitoring_clip, redis_url, redis_client):
    path, moving, _ = monitoring_clip
    summary = run([str(path)], gating_config(redis_url, "off"), stream_ids=["off"])
    assert summary.stages[0].name == "preprocess" and "carry" not in [s.name for s in summary.stages], "the chain as before"
    # A service (a stream may ask for gating later) has the gate in its chain: off lets every frame through.
    pipeline = StreamingPipeline(gating_config(redis_url, "off"), keep_alive=True)
    pipeline.start()
    try:
        assert pipeline.chain.stages[0].name == "gate"
        state = pipeline.add_stream(StreamSpec(id="auto", url=str(path)))
        wait_for(lambda: state.finished is not None, 120, "the stream to end")
    finally:
        pipeline.shutdown(10)
        pipeline.close()
    off, auto = entries(redis_client, "off"), entries(redis_client, "auto")
    assert len(off) == len(moving) + 1
    for a, b in zip(off[:-1], auto[:-1]):
        assert set(a) == FRAME_KEYS and set(b) == FRAME_KEYS
        for key in FRAME_KEYS - {"stream", "time", "latency"}:
            assert a[key] == b[key], key


def test_the_gate_forgets_a_stream_once_it_ends_and_shows_its_figures(monitoring_clip, redis_url):
    path, moving, _ = monitoring_clip
    config = gating_config(redis_url, "off")  # the service default; the stream asks for gating itself
    pipeline = StreamingPipeline(config, keep_alive=True)
    pipeline.start()
    try:
        state = pipeline.add_stream(StreamSpec(id="cam", url=str(path), gating="on"))
        wait_for(lambda: state.finished is not None, 120, "the stream to end")
        snapshot = state.snapshot()
        assert snapshot["gating"] is True
        assert snapshot["frames_inferred"] + snapshot["frames_gated"] == len(moving)
        assert 0 < snapshot["frames_gated"] < len(moving)
        registry = CollectorRegistry()
        registry.register(PipelineCollector(pipeline))
        metrics = generate_latest(registry).decode()
        assert f'segstream_frames_inferred_total{{stream="cam"}} {float(snapshot["frames_inferred"])}' in metrics
        assert f'segstream_frames_gated_total{{stream="cam"}} {float(snapshot["frames_gated"])}' in metrics
        carry = next(s for s in pipeline.chain.stages if s.name == "carry")
        assert pipeline.gate.streams == {} and carry.last == {}, "nothing kept for an ended stream"
        pipeline.remove_stream("cam")
    finally:
        pipeline.shutdown(10)
        pipeline.close()


def test_a_stream_spec_with_a_bad_gating_value_is_refused():
    with pytest.raises(ValueError, match="gating"):
        StreamSpec(id="cam", url="rtsp://127.0.0.1:1/cam", gating="sometimes")


def _frame(stream: str, index: int) -> Frame:
    import numpy as np

    return Frame(stream, index, None, 0.0, np.zeros((4, 4, 3), dtype=np.uint8), live=True)


def test_batching_after_the_gate_never_reorders_a_stream():
    a0, a1, a2, b0, b1 = _frame("a", 0), _frame("a", 1), _frame("a", 2), _frame("b", 0), _frame("b", 1)
    skipped = Carried(_frame("a", 1), 0)
    status = StreamStatus("b", "reconnecting", 0.0, 1, "rtsp://x")
    items = [a0, b0, skipped, status, a2, b1, EndOfStream("a", 3)]
    out = list(in_stream_order(items))
    flat = [x for part in out for x in (part if isinstance(part, list) else [part])]

    def order(stream: str) -> list:
        return [x for x in flat if getattr(x, "stream_id", getattr(getattr(x, "frame", None), "stream_id", None)) == stream]

    assert order("a") == [a0, skipped, a2, items[-1]]
    assert order("b") == [b0, status, b1]
    batches = [part for part in out if isinstance(part, list)]
    assert len(batches) == 2, "cut only where a stream's marker sits between its frames"
    assert a1 not in flat


def test_the_monitoring_clip_stands_still_mostly_and_its_ground_truth_says_when_it_moves(monitoring_clip):
    path, moving, coco = monitoring_clip
    assert 0.15 <= sum(moving) / len(moving) <= 0.45, "about a quarter of the frames move"
    masks: dict[int, dict[int, str]] = {}
    for a in coco["annotations"]:
        masks.setdefault(a["image_id"] - 1, {})[a["track"]] = a["segmentation"]["counts"]
    assert set(masks) == set(range(len(moving))), "ground truth on every frame"
    for i in range(1, len(moving)):
        assert (masks[i] == masks[i - 1]) != moving[i], f"frame {i}: ground truth and motion flag disagree"


def test_a_reconnect_sends_the_next_frame_to_the_model_and_an_ended_camera_is_forgotten(still_clip):
    import av

    from segstream.pipeline.stages.gating import Gate, GateSettings

    with av.open(str(still_clip)) as container:
        images = [f.to_ndarray(format="rgb24") for _, f in zip(range(8), container.decode(video=0))]
    frames = [Frame("cam", i, None, 1000.0 + i / FPS, image, live=True) for i, image in enumerate(images)]
    gate = Gate(GateSettings(max_interval=60.0), 1, lambda stream, live: live)
    out = list(gate.process(frames[:4]))
    assert [type(x).__name__ for x in out] == ["Frame", "Carried", "Carried", "Carried"]
    status = [StreamStatus("cam", "reconnecting", 0.0, 1, "rtsp://x"), StreamStatus("cam", "live", 0.0, 1, "rtsp://x")]
    out = list(gate.process([*status, *frames[4:6]]))
    assert out[:2] == status and isinstance(out[2], Frame) and isinstance(out[3], Carried)
    assert out[3].inferred_frame == 4
    list(gate.process([StreamStatus("cam", "ended", 0.0, 1, "rtsp://x")]))
    assert gate.streams == {}


def test_the_run_command_takes_gating_and_its_summary_says_how_many_frames_the_model_ran_on(still_clip, redis_url):
    from servers import segstream_cli

    done = segstream_cli("run", str(still_clip), "--gating", "on", "--redis", redis_url, "--no-progress",
                         "--input-size", "192x320", "--engine", "torch")
    assert done.returncode == 0, done.stderr
    assert "still: 60 frames published (3 inferred, 57 carried over by motion gating)" in done.stderr
    bad = segstream_cli("run", str(still_clip), "--gating", "sometimes", "--redis", "none")
    assert bad.returncode != 0 and "--gating" in bad.stderr and "Traceback" not in bad.stderr


def test_two_gated_files_batched_together_each_keep_every_frame_once_in_order(monitoring_clip, still_clip, redis_url,
                                                                             redis_client):
    path, moving, _ = monitoring_clip
    config = gating_config(redis_url, "on")
    config.engine.batch_size = 2  # skipped frames of one stream sit between frames of the other in a batch
    run([str(path), str(still_clip)], config, stream_ids=["watch", "still"])
    for stream, count in (("watch", len(moving)), ("still", 60)):
        got = entries(redis_client, stream)
        assert [m["frame"] for m in got[:-1]] == list(range(count)), stream
        assert got[-1] == {"schema": 1, "stream": stream, "eos": True, "frames": count}
        for m in got[:-1]:
            if "inferred" in m:
                assert m["inferred_frame"] < m["frame"] and "inferred" not in got[m["inferred_frame"]]


class SlowEngine(CountingEngine):
    """The real engine, taking `pause` s more per batch (a busy engine, e.g. a burst on other
    cameras) without using the CPU meanwhile: the process has room, the engine does not."""

    def __init__(self, engine, pause: float) -> None:
        super().__init__(engine)
        self.pause = pause

    def infer(self, images, image_sizes):
        time.sleep(self.pause)
        return super().infer(images, image_sizes)


class PacedCamera:
    """A live source: the given pictures in a loop, delivered at `fps` on a clock (capture time =
    delivery time), `count` frames. Duck-types the pipeline's sources."""

    live = True

    def __init__(self, stream_id: str, pictures: list, fps: float, count: int) -> None:
        self.name = self.stream_id = stream_id
        self.pictures, self.period, self.count = pictures, 1.0 / fps, count
        self.state = StreamState(stream_id, "paced://" + stream_id, "live")
        self.counters = SourceCounters()

    def check(self) -> None:
        pass

    def items(self, stopping):
        self.state.set_state("live")
        start = time.monotonic()
        for index in range(self.count):
            if stopping.wait(max(0.0, start + index * self.period - time.monotonic())):
                return
            self.state.frame_decoded()
            yield Frame(self.stream_id, index, None, time.time(), self.pictures[index % len(self.pictures)], live=True)


def test_a_gated_camera_loses_no_frame_the_model_skips_while_the_engine_is_slow(still_clip, redis_url, redis_client):
    # A still camera at 20 fps: the model runs on one frame in 2 s, but each run takes 0.6 s. The
    # frames meanwhile are only carried over; none may be dropped for want of engine room.
    with av.open(str(still_clip)) as container:
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    config = gating_config(redis_url, "on")
    config.redis.maxlen = 10_000
    base, _ = make_engine(config)
    engine = SlowEngine(base, pause=0.6)
    pipeline = StreamingPipeline(config, engine, keep_alive=True)
    camera = PacedCamera("slowcam", pictures, fps=20, count=100)
    pipeline.start()
    try:
        pipeline.add_source(camera)
        wait_for(lambda: camera.state.published + camera.state.dropped_total >= 100, 30,
                 lambda: f"100 frames published or dropped (now {camera.state.snapshot()})")
    finally:
        pipeline.shutdown(10)
        pipeline.close()
    assert camera.state.dropped_total == 0, camera.state.dropped
    assert 2 <= engine.frames <= 6  # the model ran on few frames: every other one was carried
    frames = [m["frame"] for m in entries(redis_client, "slowcam") if "frame" in m]
    assert frames == list(range(100))  # every frame once, in order
