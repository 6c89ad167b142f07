"""Annotated video sink: each frame drawn (pipeline/drawing.py) and encoded to one mp4 per stream.

Drawing and encoding run on the sink's own thread, behind a bounded queue, so x264 never holds up
the publish stage (and with it Redis publishing for every stream):

    Publish --write(result)--> queue (at most `queue_frames` frames) --encoder thread--> draw --> mp4

When the queue is full, a file's frame waits for room (a file run writes every frame; the
encoder's pace then sets the run's, as a blocking lane does), while a camera's frame evicts the
oldest camera frame waiting (a camera's picture is best-effort and must never slow its publishing;
the number dropped is in `dropped`). A stream's end and `close()` go through the same queue, so
each mp4 gets every frame before it is finished; `close()` waits for that. An encoder error
(disk full, a path that cannot be written) stops the encoder and is raised, once, by the next
`write`/`end_stream`/`close` on the publish thread, as a SinkError naming the file.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from segstream.pipeline.drawing import draw
from segstream.pipeline.messages import EndOfStream, FrameResult, StreamStatus
from segstream.pipeline.queues import END, BoundedQueue
from segstream.pipeline.sinks import SinkError

log = logging.getLogger(__name__)

#: Frames waiting for the encoder, at most (each holds its decoded picture: ~6 MB at 1080p).
QUEUE_FRAMES = 16


@dataclass(frozen=True)
class _Finish:
    """Marker: the stream's last frame was queued; finish its mp4."""

    stream_id: str


def _is_camera_frame(item: Any) -> bool:
    return isinstance(item, FrameResult) and item.frame.live


class AnnotatedVideoSink:
    """Writes one mp4 per stream (H.264 when PyAV has libx264, else MPEG-4 Part 2) on its own thread."""

    def __init__(self, path: str, fps: float = 30.0, multiple_streams: bool = False,
                 queue_frames: int = QUEUE_FRAMES) -> None:
        self.path = Path(path)
        self.fps = fps
        self.multiple = multiple_streams
        self._writers: dict[str, tuple[Any, Any]] = {}  # encoder thread only
        self.paths: list[Path] = []
        self.dropped: dict[str, int] = {}  # camera frames not drawn, by stream (the queue was full)
        self._error: SinkError | None = None
        self._raised = False
        self._closed = False
        self._lock = threading.Lock()
        if not self.path.parent.exists():
            raise SinkError(f"output video folder does not exist: {self.path.parent}")
        self._queue = BoundedQueue(queue_frames, droppable=_is_camera_frame, on_drop=self._dropped)
        self._thread = threading.Thread(target=self._encode_loop, name="video-encoder", daemon=True)
        self._thread.start()

    # -- on the publish thread ---------------------------------------------------------------
    def write(self, result: FrameResult, message: dict[str, Any]) -> None:
        self._raise_failure()
        if self._closed or self._error is not None:
            return
        if not result.frame.live:
            self._queue.put(result)  # waits for room: a file's video gets every frame
        elif not self._queue.offer(result):  # never waits: the oldest camera frame makes room
            self._dropped(result)  # (no camera frame to evict: this one is not drawn)

    def write_status(self, status: StreamStatus, message: dict[str, Any]) -> None:
        pass

    def end_stream(self, eos: EndOfStream, message: dict[str, Any]) -> None:
        self._raise_failure()
        if not self._closed:
            self._queue.put(_Finish(eos.stream_id), force=True)  # a marker never waits for room

    def close(self) -> None:
        """Encode what waits, finish every mp4 and stop the encoder (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(END, force=True)
        while self._thread.is_alive():
            self._thread.join(timeout=0.2)  # a bare join() would hold off signal handlers
        for stream_id, count in self.dropped.items():
            log.warning("%s: %d camera frames left out of the video (the encoder was behind)",
                        self._path_for(stream_id), count)
        self.dropped.clear()
        self._raise_failure()

    def abort(self) -> None:
        """Stop now: frames still waiting are not drawn (the mp4s are still finished by close())."""
        self._queue.discard(lambda item: isinstance(item, FrameResult))

    def _raise_failure(self) -> None:
        with self._lock:
            if self._error is None or self._raised:
                return
            self._raised = True
        raise self._error

    def _dropped(self, result: FrameResult) -> None:
        stream = result.frame.stream_id
        self.dropped[stream] = self.dropped.get(stream, 0) + 1

    # -- on the encoder thread ---------------------------------------------------------------
    def _encode_loop(self) -> None:
        while True:
            item = self._queue.get_many(1)[0]
            if item is END:
                break
            if self._error is not None:
                continue  # keep taking, so the publish thread never waits on a dead encoder
            try:
                if isinstance(item, _Finish):
                    self._finish(item.stream_id)
                else:
                    self._encode(item)
            except SinkError as exc:
                self._failed(exc)
            except Exception as exc:  # the thread must live on: a dead encoder would block a file's publishing
                self._failed(SinkError(f"cannot write video {self._path_for(self._stream_of(item))} ({exc})"))
        for stream_id in list(self._writers):
            try:
                self._finish(stream_id)
            except Exception as exc:
                self._failed(SinkError(f"cannot finish video {self._path_for(stream_id)} ({exc})"))

    @staticmethod
    def _stream_of(item: Any) -> str:
        return item.stream_id if isinstance(item, _Finish) else item.frame.stream_id

    def _failed(self, error: SinkError) -> None:
        log.error("%s", error)
        with self._lock:
            if self._error is None:
                self._error = error

    def _path_for(self, stream_id: str) -> Path:
        if not self.multiple:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{stream_id}{self.path.suffix or '.mp4'}")

    def _writer(self, stream_id: str, width: int, height: int) -> tuple[Any, Any]:
        if stream_id not in self._writers:
            path = self._path_for(stream_id)
            try:
                container = av.open(str(path), mode="w")
            except (av.error.FFmpegError, OSError, ValueError) as exc:  # ValueError: no format for the name
                raise SinkError(f"cannot write video {path} ({exc})") from None
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream = container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001))
            # yuv420p needs even sizes: odd frames get one black column/row.
            stream.width, stream.height = width + width % 2, height + height % 2
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"preset": "veryfast", "crf": "23"}
            self._writers[stream_id] = (container, stream)
            self.paths.append(path)
        return self._writers[stream_id]

    def picture(self, result: FrameResult) -> np.ndarray:
        """uint8 [H, W, 3] RGB: what is encoded for `result` (the real frame size, no scaling)."""
        return draw(result)

    def _encode(self, result: FrameResult) -> None:
        frame = result.frame
        container, stream = self._writer(frame.stream_id, frame.width, frame.height)
        picture = self.picture(result)
        if picture.shape[0] != stream.height or picture.shape[1] != stream.width:
            padded = np.zeros((stream.height, stream.width, 3), dtype=np.uint8)
            padded[: picture.shape[0], : picture.shape[1]] = picture
            picture = padded
        for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
            container.mux(packet)

    def _finish(self, stream_id: str) -> None:
        if stream_id in self._writers:
            container, stream = self._writers.pop(stream_id)
            try:
                for packet in stream.encode(None):
                    container.mux(packet)
            finally:
                container.close()
