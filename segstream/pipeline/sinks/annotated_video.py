"""Annotated video sink: each frame with its masks, boxes and labels drawn, encoded to mp4."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from segstream.pipeline.messages import EndOfStream, FrameResult, Instance, StreamStatus
from segstream.pipeline.sinks import SinkError

PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
     (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)],
    dtype=np.float32,
)


def instance_colour(inst: Instance) -> np.ndarray:
    """float32 [3] RGB: one colour per track (an object keeps its colour), per class without tracking."""
    key = inst.track_id if inst.track_id is not None else inst.class_id
    return PALETTE[key % len(PALETTE)]


def instance_text(inst: Instance) -> str:
    """The label drawn on an instance: "#7 star 0.93" with tracking, "star 0.93" without."""
    text = f"{inst.label} {inst.score:.2f}"
    return text if inst.track_id is None else f"#{inst.track_id} {text}"


def annotate(image: np.ndarray, instances: list[Instance]) -> np.ndarray:
    """A copy of `image` (uint8 [H, W, 3] RGB) with masks blended in and boxes + labels drawn.

    Colours follow the track id (class id when tracking is off); labels start with the track id.
    """
    canvas = image.astype(np.float32)
    for inst in instances:
        if inst.region is None or inst.region_box is None or not inst.region.any():
            continue
        x0, y0, x1, y1 = inst.region_box
        view = canvas[y0:y1, x0:x1]
        color = instance_colour(inst)
        view[inst.region] = 0.45 * view[inst.region] + 0.55 * color
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for inst in instances:
        color = tuple(int(c) for c in instance_colour(inst))
        x1, y1, x2, y2 = inst.box
        draw.rectangle((x1, y1, x2, y2), outline=color, width=2)
        text = instance_text(inst)
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle((x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2), fill=color)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0))
    return np.asarray(picture)


class AnnotatedVideoSink:
    """Writes one mp4 per stream (H.264 when PyAV has libx264, else MPEG-4 Part 2)."""

    def __init__(self, path: str, fps: float = 30.0, multiple_streams: bool = False) -> None:
        self.path = Path(path)
        self.fps = fps
        self.multiple = multiple_streams
        self._writers: dict[str, tuple[Any, Any]] = {}
        self.paths: list[Path] = []
        self._lock = threading.Lock()
        self._closed = False
        if not self.path.parent.exists():
            raise SinkError(f"output video folder does not exist: {self.path.parent}")

    def _path_for(self, stream_id: str) -> Path:
        if not self.multiple:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{stream_id}{self.path.suffix or '.mp4'}")

    def _writer(self, stream_id: str, width: int, height: int) -> tuple[Any, Any]:
        if stream_id not in self._writers:
            path = self._path_for(stream_id)
            try:
                container = av.open(str(path), mode="w")
            except (av.error.FFmpegError, OSError) as exc:
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

    def write(self, result: FrameResult, message: dict[str, Any]) -> None:
        with self._lock:
            if not self._closed:
                self._write(result)

    def _write(self, result: FrameResult) -> None:
        frame = result.frame
        container, stream = self._writer(frame.stream_id, frame.width, frame.height)
        picture = annotate(frame.host_image(), result.instances)
        if picture.shape[0] != stream.height or picture.shape[1] != stream.width:
            padded = np.zeros((stream.height, stream.width, 3), dtype=np.uint8)
            padded[: picture.shape[0], : picture.shape[1]] = picture
            picture = padded
        for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
            container.mux(packet)

    def write_status(self, status: StreamStatus, message: dict[str, Any]) -> None:
        pass

    def end_stream(self, eos: EndOfStream, message: dict[str, Any]) -> None:
        with self._lock:
            self._finish(eos.stream_id)

    def _finish(self, stream_id: str) -> None:
        if stream_id in self._writers:
            container, stream = self._writers.pop(stream_id)
            for packet in stream.encode(None):
                container.mux(packet)
            container.close()

    def close(self) -> None:
        # Under the lock: an abort closes from the main thread while publishing may be mid-frame,
        # and a half-written frame must not break the mp4.
        with self._lock:
            self._closed = True
            for stream_id in list(self._writers):
                self._finish(stream_id)
