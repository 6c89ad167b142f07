"""The viewer's drawing: masks land where the object is in the real frame, whatever size the
pipeline kept the image at, and frames are never drawn wider than viewer.max_width."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from segstream.pipeline.messages import Frame, FrameResult, Instance
from segstream.pipeline.drawing import MASK_ALPHA, class_colour, draw
from segstream.service.viewer import Viewer


def square_result(image_hw: tuple[int, int], frame_hw: tuple[int, int] | None, track: int | None = None,
                  index: int = 0) -> FrameResult:
    """A grey frame with one instance: a filled square at x 100..160, y 40..100 of the real frame."""
    image = np.full((*image_hw, 3), 100, np.uint8)
    region = np.ones((60, 60), bool)
    inst = Instance(class_id=2, label="square", score=0.9, box=(100.0, 40.0, 160.0, 100.0), rle={},
                    region=region, region_box=(100, 40, 160, 100))
    if track is not None:
        inst.track_id = track  # type: ignore[attr-defined]  (added by the tracker when present)
    frame = Frame("cam", index, None, float(index), image, live=True, source_size=frame_hw)
    return FrameResult(frame, [inst])


def test_masks_land_on_the_object_when_the_image_was_scaled_down():
    # the pipeline kept a 90x160 image of a 180x320 frame: drawn at 320 wide, mask in frame pixels
    picture = draw(square_result((90, 160), (180, 320)), max_width=640)
    assert picture.shape == (180, 320, 3)
    expected = (1 - MASK_ALPHA) * 100 + MASK_ALPHA * np.array(class_colour(2))
    inside = picture[55:85, 115:145].reshape(-1, 3).mean(0)
    assert np.abs(inside - expected).max() < 3
    assert np.abs(picture[150:170, 20:60].astype(float) - 100).max() < 3  # elsewhere: the frame


def test_frames_are_drawn_at_most_max_width_wide():
    picture = draw(square_result((720, 1280), None), max_width=640)
    assert picture.shape == (360, 640, 3)
    expected = (1 - MASK_ALPHA) * 100 + MASK_ALPHA * np.array(class_colour(2))
    assert np.abs(picture[25:45, 55:75].reshape(-1, 3).mean(0) - expected).max() < 3  # (100..160)/2


def test_a_track_id_is_written_on_the_label():
    plain = draw(square_result((180, 320), None), max_width=640)
    tracked = draw(square_result((180, 320), None, track=17), max_width=640)
    label_row = slice(20, 38)  # the label sits above the box's top edge (y 40)
    assert (tracked[label_row, 160:220] != plain[label_row, 160:220]).any()  # "... #17" is longer


def test_nothing_is_kept_or_drawn_while_nobody_watches():
    hooks: list = []

    def watch(callback):
        hooks.append(callback)
        return lambda: hooks.remove(callback)

    viewer = Viewer(watch, fps=5, max_width=640)
    assert hooks == [] and viewer.frame_jpeg("cam") is None
    with viewer.watching("cam"):
        assert len(hooks) == 1
        hooks[0](square_result((180, 320), None))
        key, jpeg = viewer.frame_jpeg("cam")
        assert Image.open(io.BytesIO(jpeg)).size == (320, 180)
        assert viewer.frame_jpeg("cam")[1] is jpeg  # drawn once, shared
        hooks[0](square_result((180, 320), None, index=1))
        hooks[0](square_result((180, 320), None, index=2))  # two more arrive before the next draw: only the newest is kept
        viewer.frame_jpeg("cam")
        assert viewer.stats.offered == 3 and viewer.stats.rendered == 2
        assert viewer.last_rendered["cam"] == 2
    assert hooks == [] and viewer.frame_jpeg("cam") is None


def test_a_fast_camera_gets_at_most_viewer_fps_frames_sent_and_the_rest_never_drawn():
    import threading
    import time

    import anyio

    hooks: list = []
    viewer = Viewer(lambda cb: (hooks.append(cb), lambda: hooks.remove(cb))[1], fps=5, max_width=640)
    parts: list[tuple[float, bytes]] = []
    pushed: list[int] = []

    def camera(stop: threading.Event) -> None:  # 100 frames/s, far more than the viewer may send
        index = 0
        while not stop.is_set():
            if hooks:
                hooks[0](square_result((180, 320), None, index=index))
                pushed.append(index)
                index += 1
            time.sleep(0.01)

    async def watch_for(seconds: float) -> None:
        with anyio.move_on_after(seconds):
            async for part in viewer.mjpeg("cam", "b"):
                parts.append((time.monotonic(), part))

    stop = threading.Event()
    feeder = threading.Thread(target=camera, args=(stop,), daemon=True)
    feeder.start()
    try:
        anyio.run(watch_for, 2.0)
    finally:
        stop.set()
        feeder.join()
    assert 5 <= len(parts) <= 11, len(parts)  # 2 s at 5 frames/s (+1 for the first)
    assert viewer.stats.rendered == len(parts) and len(pushed) > 5 * len(parts)  # the rest were never drawn
    head = b"--b\r\nContent-Type: image/jpeg\r\n\r\n"
    assert parts[0][1].startswith(head + b"\xff\xd8") and all(p.startswith(b"\xff\xd8") for _, p in parts[1:])
    # Each JPEG is followed at once by the next part's boundary and headers: the browser shows it
    # without waiting for the next frame (which for an ended file never comes).
    assert all(p.endswith(b"\xff\xd9\r\n" + head) for _, p in parts)
    assert hooks == []  # the browser left: the hook is gone


def test_the_viewer_and_the_annotated_video_draw_a_result_the_same(tmp_path):
    import av

    from segstream.pipeline.sinks.annotated_video import AnnotatedVideoSink

    result = square_result((180, 320), None, track=7)
    viewer = Viewer(lambda _callback: lambda: None, fps=5, max_width=640)
    video = AnnotatedVideoSink(str(tmp_path / "drawn.mp4"))
    assert np.array_equal(viewer.picture(result), video.picture(result))  # the same pixels, label included
    # ... and what each of them sends out (a JPEG, an H.264 frame) shows that picture.
    with viewer.watching("cam"):
        viewer._on_result(result)
        shown = np.asarray(Image.open(io.BytesIO(viewer.frame_jpeg("cam")[1])).convert("RGB"), np.float32)
    video.write(result, {})
    video.close()
    with av.open(str(tmp_path / "drawn.mp4")) as container:
        encoded = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    label = np.s_[22:38, 100:170]  # "#7 square 0.90" on its colour, above the box
    mask = np.s_[50:90, 110:150]
    for area in (label, mask):
        assert np.abs(shown[area].mean((0, 1)) - encoded[area].mean((0, 1))).max() < 6


def test_a_stream_nobody_watches_any_more_leaves_nothing_behind():
    import anyio

    hooks: list = []
    viewer = Viewer(lambda cb: (hooks.append(cb), lambda: hooks.remove(cb))[1], fps=50, max_width=640)
    present: set[str] = set()

    async def watch_until_removed(stream_id: str) -> None:
        async for _part in viewer.mjpeg(stream_id, "b", exists=lambda sid: sid in present):
            present.discard(stream_id)  # the stream is deleted while a browser watches it

    for n in range(100):  # a service whose cameras come and go
        stream_id = f"cam{n}"
        present.add(stream_id)

        async def one() -> None:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(watch_until_removed, stream_id)
                while not hooks:
                    await anyio.sleep(0.001)
                result = square_result((36, 64), None, index=n)
                result.frame.stream_id = stream_id
                hooks[0](result)

        anyio.run(one)
        assert viewer.last_rendered == {} and viewer.kept_streams() == [], n
    assert viewer.stats.rendered == 100 and hooks == []  # each was drawn, then forgotten with its stream
    assert viewer.status()["watchers"] == {} and viewer.status()["last_rendered"] == {}
