"""Every published instance carries a track id that stays with its object from frame to frame.

Most tests feed the tracking stage frames painted with the shapes domain's own drawing code and
instances made from the painted (visible) masks, as a perfect detector would report them; the
last ones run the real pipeline on a rendered clip and read the ids back from Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from segstream.pipeline.config import ConfigError, TrackingSection, parse_config
from segstream.commands.evaluate import main as evaluate_main, stage_costs
from segstream.pipeline.messages import EndOfStream, Frame, FrameResult, Instance, StreamStatus
from segstream.pipeline.run import run
from segstream.pipeline.stages.tracking import Tracking
from segstream.pipeline.wire.entries import describe, frame_message
from segstream.shapes.clip import render_clip
from segstream.pipeline.sinks.annotated_video import AnnotatedVideoSink
from segstream.service.viewer import Viewer
from segstream.shapes.evaluate import tracking_metrics
from segstream.shapes.scene import Shape, paint

WIDTH, HEIGHT, FPS = 640, 360, 30


def instance_of(mask: np.ndarray, score: float = 0.9, class_id: int = 1) -> Instance:
    """What a perfect detector reports for a visible mask (bool [H, W])."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return Instance(class_id=class_id, label="circle", score=score, box=(float(x0), float(y0), float(x1), float(y1)),
                    rle={}, region=mask[y0:y1, x0:x1].copy(), region_box=(x0, y0, x1, y1))


def painted(background: np.ndarray, shapes: list[Shape], index: int, *, stream: str = "cam", live: bool = False,
            time: float | None = None, scores: list[float] | None = None) -> tuple[FrameResult, list[int]]:
    """A FrameResult of the painted shapes and, per instance, which shape it is (its list position)."""
    image, visible = paint(background, shapes, np.random.default_rng(index))
    clock = index / FPS if time is None else time
    frame = Frame(stream_id=stream, index=index, pts=None if live else clock, time=1.8e9 + clock, image=image, live=live)
    instances, which = [], []
    for k, mask in enumerate(visible):
        if mask.sum() >= 40:
            instances.append(instance_of(mask, scores[k] if scores else 0.9, shapes[k].class_id))
            which.append(k)
    return FrameResult(frame=frame, instances=instances), which


def flat(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (HEIGHT, WIDTH, 3)).copy()


def track(stage: Tracking, results: list[FrameResult]) -> None:
    for result in results:
        assert list(stage.process([result])) == [result]


def ids_by_object(frames: list[tuple[FrameResult, list[int]]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for result, which in frames:
        for inst, k in zip(result.instances, which):
            out.setdefault(k, []).append(inst.track_id)
    return out


def test_a_moving_object_keeps_one_id_through_a_clip_even_when_detection_falters():
    star = Shape(class_id=4, cx=80, cy=120, radius=55, angle=0.0, colour=(230, 60, 40), vx=7.0, vy=2.0, spin=0.05)
    background = flat((40, 90, 40))
    stage = Tracking(TrackingSection())
    frames = []
    for i in range(60):
        result, which = painted(background, [star], i, scores=[0.3 if 20 <= i < 26 else 0.9])  # a weak spell
        if 40 <= i < 44:
            result.instances, which = [], []  # and a few frames where the detector misses it entirely
        frames.append((result, which))
        star = star.moved()
    track(stage, [r for r, _ in frames])
    ids = ids_by_object(frames)[0]
    assert len(ids) == 56 and len(set(ids)) == 1, ids


def test_two_crossing_objects_keep_their_ids_through_a_partial_occlusion():
    # The same class and size, crossing head-on; the one drawn last hides the other more and more,
    # and while more than 40% of it is hidden the detector loses it (as real ones do).
    lower = Shape(class_id=1, cx=100, cy=170, radius=50, angle=0.0, colour=(220, 200, 40), vx=12.0)
    upper = Shape(class_id=1, cx=540, cy=190, radius=50, angle=0.0, colour=(40, 80, 220), vx=-12.0)
    background = flat((120, 120, 120))
    stage = Tracking(TrackingSection())
    frames, lost = [], 0
    for i in range(37):
        result, which = painted(background, [lower, upper], i)
        _, visible = paint(background, [lower, upper], np.random.default_rng(0))
        _, alone = paint(background, [lower], np.random.default_rng(0))
        if 1 - visible[0].sum() / alone[0].sum() > 0.4:
            k = which.index(0)
            del result.instances[k], which[k]
            lost += 1
        frames.append((result, which))
        lower, upper = lower.moved(), upper.moved()
    track(stage, [r for r, _ in frames])
    assert 2 <= lost <= 6
    ids = ids_by_object(frames)
    assert len(set(ids[0])) == 1 and len(set(ids[1])) == 1, ids
    assert ids[0][0] != ids[1][0]


def test_a_scene_cut_gives_every_object_a_new_id():
    background_a, background_b = flat((200, 190, 170)), flat((30, 40, 90))
    scene_a = [Shape(class_id=2, cx=200, cy=180, radius=60, angle=0.3, colour=(200, 40, 40), vx=1.0),
               Shape(class_id=3, cx=470, cy=150, radius=50, angle=0.0, colour=(40, 160, 40))]
    # The next scene has an object partly where the first square was: without the cut it would inherit its id.
    scene_b = [Shape(class_id=2, cx=245, cy=195, radius=60, angle=0.0, colour=(240, 240, 60)),
               Shape(class_id=1, cx=520, cy=300, radius=45, angle=0.0, colour=(250, 120, 200))]

    def ids(settings: TrackingSection) -> tuple[set[int], set[int], Tracking]:
        stage = Tracking(settings)
        before = [painted(background_a, scene_a, i) for i in range(15)]
        after = [painted(background_b, scene_b, i) for i in range(15, 25)]
        track(stage, [r for r, _ in before + after])
        return ({inst.track_id for r, _ in before for inst in r.instances},
                {inst.track_id for r, _ in after for inst in r.instances}, stage)

    old, new, stage = ids(TrackingSection())
    assert len(old) == 2 and len(new) == 2 and not old & new, (old, new)
    assert stage.trackers["cam"].cuts == 1
    old, new, _ = ids(TrackingSection(cut_change=1.0))  # the same frames with cut detection off
    assert old & new, "the scene was meant to tempt the tracker into carrying an id across the cut"


def test_a_sudden_change_of_light_that_leaves_the_objects_in_place_is_not_a_cut():
    shapes = [Shape(class_id=2, cx=200, cy=180, radius=60, angle=0.3, colour=(200, 40, 40), vx=2.0),
              Shape(class_id=3, cx=470, cy=150, radius=50, angle=0.0, colour=(40, 160, 40), vy=1.0)]
    stage = Tracking(TrackingSection())
    frames = []
    for i in range(30):
        frames.append(painted(flat((60, 60, 60) if i < 15 else (210, 210, 200)), shapes, i))
        shapes = [s.moved() for s in shapes]
    track(stage, [r for r, _ in frames])
    assert all(len(set(ids)) == 1 for ids in ids_by_object(frames).values())
    assert stage.trackers["cam"].cuts == 0


@pytest.mark.parametrize("gap,kept", [(1.5, True), (3.0, False)])
def test_a_camera_reconnect_within_max_age_keeps_ids_and_a_longer_outage_does_not(gap, kept):
    """Live frames carry capture times; max_age (2 s by default) is measured on them, not in frames."""
    shapes = [Shape(class_id=4, cx=200, cy=180, radius=60, angle=0.3, colour=(200, 40, 40), vx=0.5),
              Shape(class_id=1, cx=470, cy=150, radius=50, angle=0.0, colour=(40, 160, 40))]
    background = flat((90, 110, 140))
    stage = Tracking(TrackingSection())
    before = [painted(background, shapes, i, live=True, time=i / FPS) for i in range(20)]
    resumed = 20 / FPS + gap
    after = [painted(background, shapes, 20 + int(gap * FPS) + i, live=True, time=resumed + i / FPS) for i in range(10)]
    track(stage, [r for r, _ in before + after])
    old = [inst.track_id for r, _ in before[-1:] for inst in r.instances]
    new = [inst.track_id for r, _ in after[:1] for inst in r.instances]
    assert (old == new) if kept else not set(old) & set(new), (old, new)


def test_every_instance_gets_an_id_and_ids_are_never_reused_in_a_stream():
    stage = Tracking(TrackingSection())
    shape = Shape(class_id=1, cx=300, cy=180, radius=50, angle=0.0, colour=(250, 250, 250))
    seen: set[int] = set()
    for i in range(6):
        # A faint, flickering detection: never confirmed, but a consumer still gets an id every time.
        result, _ = painted(flat((0, 0, 0)), [shape], i, scores=[0.15])
        if i % 2:
            result.instances = []
        track(stage, [result])
        for inst in result.instances:
            assert isinstance(inst.track_id, int)
            seen.add(inst.track_id)
    track(stage, [painted(flat((0, 0, 0)), [shape], 7)[0]])
    assert len(seen) == 3  # each reappearance after a miss of an unconfirmed track is a new track


def test_a_stream_taken_over_continues_after_the_ids_already_published():
    stage = Tracking(TrackingSection())
    shape = Shape(class_id=1, cx=300, cy=180, radius=50, angle=0.0, colour=(250, 250, 250))
    stage.start_stream("moved", first_id=42)  # another worker published ids up to 41 on this stream
    first, _ = painted(flat((0, 0, 0)), [shape], 0, stream="moved")
    track(stage, [first])
    assert first.instances[0].track_id == 42
    stage.forget("moved")
    stage.start_stream("moved", first_id=10)  # never back below what this process gave already
    again, _ = painted(flat((0, 0, 0)), [shape], 1, stream="moved")
    track(stage, [again])
    assert again.instances[0].track_id == 43


def test_other_messages_pass_untouched_and_an_end_of_stream_drops_that_streams_tracks():
    class Unknown:  # any message kind the stage does not know
        pass

    stage = Tracking(TrackingSection())
    shape = Shape(class_id=1, cx=300, cy=180, radius=50, angle=0.0, colour=(250, 250, 250))
    a1, _ = painted(flat((0, 0, 0)), [shape], 0, stream="a")
    b1, _ = painted(flat((0, 0, 0)), [shape], 0, stream="b")
    other, eos = Unknown(), EndOfStream("a", frames=1)
    assert list(stage.process([other, a1, b1, eos])) == [other, a1, b1, eos]
    assert set(stage.trackers) == {"b"}
    a2, _ = painted(flat((0, 0, 0)), [shape], 1, stream="a")
    b2, _ = painted(flat((0, 0, 0)), [shape], 1, stream="b")
    track(stage, [a2, b2])
    assert b2.instances[0].track_id == b1.instances[0].track_id  # the other stream is unaffected
    assert a2.instances[0].track_id > a1.instances[0].track_id  # a stream's ids stay unique for the run


def test_a_camera_keeps_its_tracks_while_reconnecting_and_drops_them_when_it_ends():
    stage = Tracking(TrackingSection())
    shape = Shape(class_id=1, cx=300, cy=180, radius=50, angle=0.0, colour=(250, 250, 250))
    first, _ = painted(flat((0, 0, 0)), [shape], 0, live=True, time=0.0)
    failed = FrameResult(frame=painted(flat((0, 0, 0)), [shape], 1, live=True, time=0.03)[0].frame, error="engine failed")
    reconnecting = StreamStatus("cam", "reconnecting", since=0.1, reconnects=1, url="rtsp://cam")
    assert list(stage.process([first, failed, reconnecting])) == [first, failed, reconnecting]
    assert failed.instances == []
    again, _ = painted(flat((0, 0, 0)), [shape], 40, live=True, time=1.3)
    track(stage, [again])
    # Tentative after one detection; a frame the engine failed on is not a miss, so the track lives on.
    assert again.instances[0].track_id == first.instances[0].track_id
    track(stage, [StreamStatus("cam", "ended", since=2.0, reconnects=1, url="rtsp://cam")])
    assert "cam" not in stage.trackers


def test_ids_are_on_the_wire_in_what_subscribe_prints_and_on_the_annotated_video_and_viewer(tmp_path):
    shapes = [Shape(class_id=1, cx=200, cy=180, radius=50, angle=0.0, colour=(250, 250, 250)),
              Shape(class_id=1, cx=450, cy=180, radius=50, angle=0.0, colour=(250, 250, 250))]
    result, _ = painted(flat((0, 0, 0)), shapes, 0)
    Tracking(TrackingSection()).process([result]).__next__()
    message = frame_message(result, 0)
    assert [inst["track_id"] for inst in message["instances"]] == [1, 2]
    assert "2 circle #1 #2" in describe(message)
    video, viewer = AnnotatedVideoSink(str(tmp_path / "tracks.mp4")), Viewer(lambda _callback: lambda: None)
    video.close()
    for picture in (video.picture(result), viewer.picture(result)):  # the annotated video, the live viewer
        left, right = picture[170:190, 190:210].mean((0, 1)), picture[170:190, 440:460].mean((0, 1))
        assert np.abs(left - right).max() > 20, "two tracks of one class get two colours"
    for inst in result.instances:
        inst.track_id = None
    assert all("track_id" not in inst for inst in frame_message(result, 0)["instances"])
    assert "#" not in describe(frame_message(result, 0))


def test_tracking_config_is_validated_with_the_key_named():
    with pytest.raises(ConfigError, match="tracking"):
        parse_config({"tracking": {"low_score": 0.8, "high_score": 0.5}})
    with pytest.raises(ConfigError, match="tracking.max_age"):
        parse_config({"tracking": {"max_age": 0}})
    assert parse_config({"tracking": {"enabled": False}}).tracking.enabled is False


def test_both_generators_name_each_objects_identity_in_their_ground_truth(tmp_path):
    own = render_clip(tmp_path / "own.mp4", tmp_path / "own.json", seed=3, frames=12, scene_frames=(6, 6))
    renderer = Path(__file__).parents[2] / "benchmarks" / "independent_shapes.py"
    subprocess.run([sys.executable, str(renderer), str(tmp_path / "ind.mp4"), str(tmp_path / "ind.json"),
                    "--seed", "4", "--frames", "20"], check=True, capture_output=True)
    independent = json.loads((tmp_path / "ind.json").read_text())
    for coco in (own, independent):
        by_frame: dict[int, dict[int, list[float]]] = {}
        for ann in coco["annotations"]:
            by_frame.setdefault(ann["image_id"], {})[ann["track"]] = ann["bbox"]
        assert len({ann["track"] for ann in coco["annotations"]}) >= 2
        for image_id, objects in by_frame.items():
            assert len(objects) == sum(1 for a in coco["annotations"] if a["image_id"] == image_id)  # unique per frame
            following = by_frame.get(image_id + 1, {})
            for track_id in objects.keys() & following.keys():  # an identity moves a little, never jumps
                (x, y, w, h), (x2, y2, w2, h2) = objects[track_id], following[track_id]
                assert abs((x + w / 2) - (x2 + w2 / 2)) < 40 and abs((y + h / 2) - (y2 + h2 / 2)) < 40


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tracking")
    video, gt = folder / "moving.mp4", folder / "moving.json"
    render_clip(video, gt, seed=7, frames=36, scene_frames=(18, 18))
    return video, gt


def test_the_pipeline_publishes_stable_track_ids_to_redis(clip, redis_url, redis_client):
    video, gt = clip
    config = parse_config({"redis": {"url": redis_url}, "output": {"progress": False}})  # the bundled model as shipped
    summary = run([str(video)], config, stream_ids=["moving"])
    entries = [json.loads(fields[b"data"]) for _, fields in redis_client.xrange("segstream:moving")]
    frames = [e for e in entries if "instances" in e]
    assert len(frames) == 36
    instances = [inst for e in frames for inst in e["instances"]]
    assert instances and all(isinstance(inst["track_id"], int) for inst in instances)
    # Each object of the clip is followed under one id for (almost) all of its frames, and no id
    # crosses the clip's scene cut at frame 18.
    metrics = tracking_metrics(gt, entries)
    assert metrics is not None and metrics["gt_tracks"] >= 3, metrics
    assert metrics["idf1"] >= 0.85 * metrics["idf1_oracle"], metrics
    assert metrics["switches"] <= 2, metrics
    first = {i["track_id"] for e in frames[:18] for i in e["instances"]}
    second = {i["track_id"] for e in frames[18:] for i in e["instances"]}
    assert first and second and not first & second
    costs = stage_costs(summary)
    assert 0 < costs["tracking_ms"] < costs["engine_ms"]


def test_eval_reports_identity_figures_next_to_mask_ap(clip, redis_url, capsys):
    video, gt = clip
    assert evaluate_main([str(video), str(gt), "--redis", redis_url]) == 0
    report = capsys.readouterr().out
    assert "mask AP50" in report and "tracking (score >= 0.5): IDF1" in report and "ID switches" in report, report
    assert "% of the engine's" in report


def test_disabled_tracking_publishes_no_track_id(clip, fast_config, redis_client):
    video, _ = clip
    fast_config.tracking.enabled = False
    fast_config.source.max_frames = 6
    summary = run([str(video)], fast_config, stream_ids=["untracked"])
    assert "tracking" not in [s.name for s in summary.stages]
    entries = [json.loads(fields[b"data"]) for _, fields in redis_client.xrange("segstream:untracked")]
    instances = [inst for e in entries if "instances" in e for inst in e["instances"]]
    assert instances and not any("track_id" in inst for inst in instances)


def test_the_trackers_assignment_pairs_exactly_as_scipys_solver_including_ties():
    """The tracker's numpy solver (pipeline/stages/assignment.py, kept so a run never loads
    scipy.optimize) returns scipy's pairs: random costs, tied integer costs, excluded pairs (1e6),
    wide and tall matrices, empty ones."""
    from scipy.optimize import linear_sum_assignment as scipys

    from segstream.pipeline.stages.assignment import linear_sum_assignment

    rng = np.random.default_rng(0)
    for trial in range(1500):
        rows, cols = int(rng.integers(0, 12)), int(rng.integers(0, 12))
        cost = (rng.random((rows, cols)), rng.integers(0, 3, (rows, cols)).astype(float),
                np.where(rng.random((rows, cols)) < 0.5, 1e6, rng.random((rows, cols))))[trial % 3]
        want, got = scipys(cost), linear_sum_assignment(cost)
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1]), (trial, cost)
    with pytest.raises(ValueError, match="infinite or NaN"):
        linear_sum_assignment(np.array([[0.0, np.nan]]))
