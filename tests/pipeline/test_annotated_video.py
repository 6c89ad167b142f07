"""The annotated video is encoded on its own thread: a slow encoder never holds up publishing to
Redis, a file's video still gets every frame, and a camera's frames never wait for the encoder."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from media import count_decodable_frames, write_clip
from servers import wait_for
from segstream.pipeline.messages import EndOfStream, Frame, FrameResult
from segstream.pipeline.run import run
from segstream.pipeline.sinks.annotated_video import AnnotatedVideoSink


def published(client, stream_id: str) -> list[dict]:
    return [json.loads(fields[b"data"]) for _, fields in client.xrange(f"segstream:{stream_id}")]


def test_frames_reach_redis_while_the_video_encoder_is_stuck_and_the_video_still_gets_every_frame(
        tmp_path, fast_config, redis_client, monkeypatch):
    clip = write_clip(tmp_path / "clip.mp4", frames=8)
    fast_config.output.video = str(tmp_path / "annotated.mp4")
    release, encoding = threading.Event(), threading.Event()
    encode = AnnotatedVideoSink._encode

    def stuck_encoder(self, result):  # x264 far slower than the run (a huge frame, a slow disk)
        encoding.set()
        release.wait(120)
        encode(self, result)

    monkeypatch.setattr(AnnotatedVideoSink, "_encode", stuck_encoder)
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("summary", run([str(clip)], fast_config)), daemon=True)
    runner.start()
    try:
        entries = wait_for(lambda: (lambda e: e if e and e[-1].get("eos") else None)(published(redis_client, "clip")),
                           120, "every frame and the EOS on Redis while the encoder is stuck")
        assert [e["frame"] for e in entries[:-1]] == list(range(8)) and entries[-1]["frames"] == 8
        assert encoding.is_set() and runner.is_alive()  # the video is still being written: the run waits for it
    finally:
        release.set()
        runner.join(120)
    assert not runner.is_alive()
    assert outcome["summary"].videos == [tmp_path / "annotated.mp4"]
    assert count_decodable_frames(tmp_path / "annotated.mp4") == 8  # a file run writes every frame


def frame_result(index: int, live: bool, stream: str = "cam") -> FrameResult:
    image = np.full((64, 96, 3), 40 + index % 200, np.uint8)
    return FrameResult(Frame(stream, index, index / 30, time.time(), image, live=live), [])


def test_a_camera_never_waits_for_the_encoder_and_a_file_waits_for_room(tmp_path, monkeypatch):
    release = threading.Event()
    encode = AnnotatedVideoSink._encode
    monkeypatch.setattr(AnnotatedVideoSink, "_encode", lambda self, result: (release.wait(60), encode(self, result)))
    sink = AnnotatedVideoSink(str(tmp_path / "out.mp4"), multiple_streams=True, queue_frames=3)
    try:
        started = time.monotonic()
        for i in range(20):  # a camera at full speed while the encoder is stuck
            sink.write(frame_result(i, live=True), {})
        assert time.monotonic() - started < 2.0, "a camera frame waited for the encoder"
        assert sink.dropped["cam"] >= 16  # the oldest waiting camera frames made room for the newest (said at close)

        file_done = threading.Event()

        def a_file() -> None:
            for i in range(10):
                sink.write(frame_result(i, live=False, stream="clip"), {})
            sink.end_stream(EndOfStream("clip", 10), {})
            file_done.set()

        threading.Thread(target=a_file, daemon=True).start()
        assert not file_done.wait(1.0), "a file's frames were taken without room for them"
    finally:
        release.set()
    assert file_done.wait(60)
    sink.close()
    assert count_decodable_frames(tmp_path / "out-clip.mp4") == 10  # every frame of the file
    assert 1 <= count_decodable_frames(tmp_path / "out-cam.mp4") <= 4  # the camera's newest few


def test_a_video_that_cannot_be_written_is_one_clear_error_from_the_publish_side(tmp_path):
    (tmp_path / "taken").mkdir()  # a folder where the mp4 should go: the encoder cannot open it
    sink = AnnotatedVideoSink(str(tmp_path / "taken"))
    sink.write(frame_result(0, live=False), {})
    try:
        wait_for(lambda: sink._error is not None, 30, "the encoder to fail")
        try:
            sink.write(frame_result(1, live=False), {})
        except Exception as exc:
            assert "cannot write video" in str(exc) and str(tmp_path / "taken") in str(exc)
        else:
            raise AssertionError("the failure was not raised on the publish side")
    finally:
        sink.close()  # (raised once: closing after it is quiet)
