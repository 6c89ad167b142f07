"""The live viewer's server side: the newest frame of a watched stream, drawn and sent as MJPEG.

Bounded cost, whatever the cameras do:
- The pipeline's watch hook is attached only while at least one browser watches a stream; the hook
  keeps a reference to the newest FrameResult of each watched stream (one dict store on the
  publish thread), so nothing is queued: a frame the viewer did not get to is simply replaced.
- Each watched stream is drawn and JPEG-encoded at most `fps` times a second, at most `max_width`
  pixels wide, once per frame however many browsers watch it (the JPEG is shared).
- Drawing runs on a worker thread, never on the pipeline's threads. Its time is counted
  (`stats`), so the cost can be read from /metrics and checked by benchmarks/serve_viewer.py.

MJPEG (multipart/x-mixed-replace in an <img>) was chosen over WebSocket + canvas: the browser
decodes it natively, the masks are drawn once on the server instead of shipping them to every
browser, and a slow browser only slows its own TCP connection, which then just gets fewer frames.
"""

from __future__ import annotations

import io
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator

import anyio
import numpy as np
from PIL import Image, ImageDraw

from segstream.pipeline.messages import FrameResult, Instance

#: Mask/box colours by track id, or class id without tracking (RGB); the same palette and rule as
#: the annotated-video sink, so an object looks the same in both.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)
#: Weight of the class colour in a mask pixel (the rest is the frame): semi-transparent.
MASK_ALPHA = 0.55

Watch = Callable[[Callable[[FrameResult], None]], Callable[[], None]]


def class_colour(class_id: int, track_id: int | None = None) -> tuple[int, int, int]:
    """An instance's colour: by track when the tracker gave it one (an object keeps its colour), else by class."""
    return PALETTE[(track_id if track_id is not None else class_id) % len(PALETTE)]


def display_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """(width, height) of the drawn frame: the real frame size, scaled down to max_width."""
    if width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


def draw(result: FrameResult, max_width: int) -> np.ndarray:
    """uint8 [h, w, 3] RGB: the frame at display size, masks blended in, boxes and labels drawn.

    The frame's image may be smaller than the real frame (decoded straight to the engine's input
    size); instances are in real-frame pixels, so everything is scaled from frame.width/height.
    """
    frame = result.frame
    out_w, out_h = display_size(frame.width, frame.height, max_width)
    picture = Image.fromarray(frame.host_image())
    if picture.size != (out_w, out_h):
        picture = picture.resize((out_w, out_h), Image.BILINEAR)
    sx, sy = out_w / frame.width, out_h / frame.height
    canvas = np.asarray(picture, dtype=np.float32).copy()
    for inst in result.instances:
        _blend_mask(canvas, inst, sx, sy)
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for inst in result.instances:
        colour = class_colour(inst.class_id, getattr(inst, "track_id", None))
        x1, y1, x2, y2 = (inst.box[0] * sx, inst.box[1] * sy, inst.box[2] * sx, inst.box[3] * sy)
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        track = getattr(inst, "track_id", None)
        text = f"{inst.label} {inst.score:.2f}" + (f" #{track}" if track is not None else "")
        left, top, right, bottom = pen.textbbox((0, 0), text)
        ty = max(0.0, y1 - (bottom - top) - 3)
        pen.rectangle((x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 3), fill=colour)
        pen.text((x1 + 2, ty), text, fill=(0, 0, 0))
    return np.asarray(picture)


def _blend_mask(canvas: np.ndarray, inst: Instance, sx: float, sy: float) -> None:
    if inst.region is None or inst.region_box is None or not inst.region.any():
        return
    x0, y0, x1, y1 = inst.region_box
    h, w = canvas.shape[:2]
    dx0, dy0 = int(np.floor(x0 * sx)), int(np.floor(y0 * sy))
    dx1, dy1 = min(w, max(dx0 + 1, int(np.ceil(x1 * sx)))), min(h, max(dy0 + 1, int(np.ceil(y1 * sy))))
    if dx0 >= w or dy0 >= h:
        return
    region = inst.region
    if region.shape != (dy1 - dy0, dx1 - dx0):  # nearest neighbour keeps the mask binary
        region = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize((dx1 - dx0, dy1 - dy0), Image.NEAREST)) > 127
    view = canvas[dy0:dy1, dx0:dx1]
    colour = np.asarray(class_colour(inst.class_id, getattr(inst, "track_id", None)), np.float32)
    view[region] = (1.0 - MASK_ALPHA) * view[region] + MASK_ALPHA * colour


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class ViewerStats:
    """The viewer's own work. busy/cpu: seconds drawing + encoding (wall, thread CPU); hook:
    seconds spent in the watch hook on the publish thread; offered: frames of watched streams
    handed to the hook; rendered: frames drawn (the rest were replaced by a newer one, unqueued)."""

    busy: float = 0.0
    cpu: float = 0.0
    hook: float = 0.0
    offered: int = 0
    rendered: int = 0


@dataclass
class _Rendered:
    key: tuple[int, float]  # (frame index, capture time): identifies the frame drawn
    jpeg: bytes


class Viewer:
    """Holds the newest frame of each watched stream and renders it on demand (see module doc).

    watch: the pipeline's `watch(callback) -> unwatch`; fps: most frames per second per stream;
    max_width: most pixels of width drawn; quality: JPEG quality.
    """

    def __init__(self, watch: Watch, fps: float = 5.0, max_width: int = 640, quality: int = 75) -> None:
        self._watch = watch
        self.fps = fps
        self.max_width = max_width
        self.quality = quality
        self.stats = ViewerStats()
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._watchers: dict[str, int] = {}
        self._watched: frozenset[str] = frozenset()
        self._unwatch: Callable[[], None] | None = None
        self._latest: dict[str, FrameResult] = {}
        self._rendered: dict[str, _Rendered] = {}
        self._render_locks: dict[str, threading.Lock] = {}
        self.last_rendered: dict[str, int] = {}  # stream -> frame index of the newest frame drawn

    # -- the hook, on the pipeline's publish thread: cheap, never blocks ---------------------
    def _on_result(self, result: FrameResult) -> None:
        start = time.perf_counter()
        stream_id = result.frame.stream_id
        if stream_id in self._watched:
            self._latest[stream_id] = result
            self.stats.offered += 1
        self.stats.hook += time.perf_counter() - start

    # -- who watches -------------------------------------------------------------------------
    @property
    def watchers(self) -> int:
        return sum(self._watchers.values())

    @contextmanager
    def watching(self, stream_id: str) -> Iterator[None]:
        """While inside, frames of `stream_id` are kept for drawing."""
        with self._lock:
            self._watchers[stream_id] = self._watchers.get(stream_id, 0) + 1
            self._watched = frozenset(self._watchers)
            if self._unwatch is None:
                self._unwatch = self._watch(self._on_result)
        try:
            yield
        finally:
            with self._lock:
                self._watchers[stream_id] -= 1
                if self._watchers[stream_id] == 0:
                    del self._watchers[stream_id]
                    self._latest.pop(stream_id, None)
                    self._rendered.pop(stream_id, None)
                self._watched = frozenset(self._watchers)
                if not self._watchers and self._unwatch is not None:
                    self._unwatch()
                    self._unwatch = None

    # -- drawing, on a worker thread ---------------------------------------------------------
    def frame_jpeg(self, stream_id: str) -> tuple[tuple[int, float], bytes] | None:
        """(frame key, JPEG) of the newest frame of a watched stream, drawn at most once."""
        result = self._latest.get(stream_id)
        if result is None:
            return None
        key = (result.frame.index, result.frame.time)
        lock = self._render_locks.setdefault(stream_id, threading.Lock())
        with lock:
            done = self._rendered.get(stream_id)
            if done is not None and done.key == key:
                return done.key, done.jpeg
            wall, cpu = time.perf_counter(), time.thread_time()
            jpeg = encode_jpeg(draw(result, self.max_width), self.quality)
            self.stats.cpu += time.thread_time() - cpu
            self.stats.busy += time.perf_counter() - wall
            self.stats.rendered += 1
            self._rendered[stream_id] = _Rendered(key, jpeg)
            self.last_rendered[stream_id] = result.frame.index
            return key, jpeg

    async def mjpeg(self, stream_id: str, boundary: str, exists: Callable[[str], bool] = lambda _id: True) -> AsyncIterator[bytes]:
        """multipart/x-mixed-replace body: a part per new frame, at most `fps` per second, until
        the service stops or the stream is removed (`exists` says no)."""
        interval = 1.0 / self.fps
        # Each JPEG is followed at once by the next part's boundary and headers: Chromium shows a
        # part only once the next one has begun, so a JPEG followed by nothing (the last frame of an
        # ended file, a frozen camera) would never be shown, and every frame would show one late.
        # (Hence no Content-Length: the next frame's size is not known yet; the boundary delimits.)
        opening = f"--{boundary}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        with self.watching(stream_id):
            sent = None
            while not self.closing.is_set() and exists(stream_id):
                tick = time.monotonic()
                got = await anyio.to_thread.run_sync(self.frame_jpeg, stream_id)
                if got is not None and got[0] != sent:
                    first = sent is None
                    sent, jpeg = got
                    yield (opening if first else b"") + jpeg + b"\r\n" + opening
                await anyio.sleep(max(0.0, interval - (time.monotonic() - tick)))

    def close(self) -> None:
        """End every MJPEG response (service shutdown)."""
        self.closing.set()

    def status(self) -> dict:
        s = self.stats
        return {"watchers": dict(self._watchers), "fps": self.fps, "max_width": self.max_width,
                "rendered": s.rendered, "offered": s.offered, "busy_seconds": round(s.busy, 4),
                "cpu_seconds": round(s.cpu, 4), "hook_seconds": round(s.hook, 6),
                "last_rendered": dict(self.last_rendered)}
