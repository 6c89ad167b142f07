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
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator

import anyio
import numpy as np
from PIL import Image

from segstream.pipeline.drawing import draw
from segstream.pipeline.messages import FrameResult

Watch = Callable[[Callable[[FrameResult], None]], Callable[[], None]]


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


@dataclass
class _Watched:
    """What the viewer keeps for one stream, only while someone watches it (freed with the last
    watcher: a service whose cameras come and go for months keeps nothing of the gone ones)."""

    watchers: int = 0
    latest: FrameResult | None = None  # newest frame handed to the hook
    rendered: _Rendered | None = None  # newest frame drawn
    last_rendered: int | None = None  # its frame index
    lock: threading.Lock = field(default_factory=threading.Lock)  # one drawing at a time per stream


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
        self._streams: dict[str, _Watched] = {}  # only the watched ones
        self._unwatch: Callable[[], None] | None = None

    # -- the hook, on the pipeline's publish thread: cheap, never blocks ---------------------
    def _on_result(self, result: FrameResult) -> None:
        start = time.perf_counter()
        watched = self._streams.get(result.frame.stream_id)
        if watched is not None:  # (a stream no longer watched drops its _Watched, and this with it)
            watched.latest = result
            self.stats.offered += 1
        self.stats.hook += time.perf_counter() - start

    # -- who watches -------------------------------------------------------------------------
    @property
    def watchers(self) -> int:
        with self._lock:
            return sum(w.watchers for w in self._streams.values())

    @property
    def last_rendered(self) -> dict[str, int]:
        """stream -> frame index of the newest frame drawn, of the watched streams."""
        with self._lock:
            return {sid: w.last_rendered for sid, w in self._streams.items() if w.last_rendered is not None}

    def kept_streams(self) -> list[str]:
        """The streams the viewer keeps anything for (the watched ones)."""
        with self._lock:
            return list(self._streams)

    @contextmanager
    def watching(self, stream_id: str) -> Iterator[None]:
        """While inside, frames of `stream_id` are kept for drawing."""
        with self._lock:
            self._streams.setdefault(stream_id, _Watched()).watchers += 1
            if self._unwatch is None:
                self._unwatch = self._watch(self._on_result)
        try:
            yield
        finally:
            with self._lock:
                watched = self._streams[stream_id]
                watched.watchers -= 1
                if watched.watchers == 0:
                    del self._streams[stream_id]
                if not self._streams and self._unwatch is not None:
                    self._unwatch()
                    self._unwatch = None

    # -- drawing, on a worker thread ---------------------------------------------------------
    def picture(self, result: FrameResult) -> np.ndarray:
        """uint8 [h, w, 3] RGB: what is sent for `result` (before JPEG), at most max_width wide."""
        return draw(result, self.max_width)

    def frame_jpeg(self, stream_id: str) -> tuple[tuple[int, float], bytes] | None:
        """(frame key, JPEG) of the newest frame of a watched stream, drawn at most once."""
        watched = self._streams.get(stream_id)
        result = watched.latest if watched is not None else None
        if watched is None or result is None:
            return None
        key = (result.frame.index, result.frame.time)
        with watched.lock:
            done = watched.rendered
            if done is not None and done.key == key:
                return done.key, done.jpeg
            wall, cpu = time.perf_counter(), time.thread_time()
            jpeg = encode_jpeg(self.picture(result), self.quality)
            self.stats.cpu += time.thread_time() - cpu
            self.stats.busy += time.perf_counter() - wall
            self.stats.rendered += 1
            watched.rendered = _Rendered(key, jpeg)
            watched.last_rendered = result.frame.index
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
        with self._lock:
            watchers = {sid: w.watchers for sid, w in self._streams.items()}
        return {"watchers": watchers, "fps": self.fps, "max_width": self.max_width,
                "rendered": s.rendered, "offered": s.offered, "busy_seconds": round(s.busy, 4),
                "cpu_seconds": round(s.cpu, 4), "hook_seconds": round(s.hook, 6),
                "last_rendered": self.last_rendered}
