"""Sources: video files and RTSP cameras decoded with PyAV into Frame messages.

A file source yields every decodable frame in order and then one EndOfStream. A corrupt packet
in the middle of a file is skipped and counted. A camera source reconnects after the feed drops
(up to `reconnect_window` seconds of trying) and never ends on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from segstream.pipeline.messages import EndOfStream, Frame

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "srt://")


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message is one line for the user."""


Fit = Callable[[int, int], tuple[int, int]]


class PixelConverter:
    """Decoded frames -> uint8 RGB arrays, optionally scaled down to the engine's size.

    fit(H, W) -> (h, w): the size the engine will resize the frame to. When given, swscale
    scales the frame here, in the source's thread, which replaces a float resize of the full
    frame in preprocess (4.4 ms of a 640x360 frame) with two C passes (~0.7 ms). The frame is
    converted to RGB first and then area-averaged in RGB: that is what the engines' own
    bilinear resize computes for a 2x reduction, so the model sees the pixels it was evaluated
    on (scaling in YUV in one pass was 0.4 ms cheaper but cost 0.01 mask AP).
    """

    def __init__(self, fit: Fit | None = None) -> None:
        self.fit = fit
        # One reformatter per pass keeps each pass's scaler context from frame to frame.
        self._to_rgb = VideoReformatter()
        self._scale = VideoReformatter()

    def convert(self, vframe: av.VideoFrame) -> tuple[np.ndarray, tuple[int, int] | None]:
        """(image uint8 [h, w, 3], source (H, W) when scaled else None)."""
        size = (vframe.height, vframe.width)
        h, w = self.fit(*size) if self.fit else size
        if (h, w) == size:
            return vframe.to_ndarray(format="rgb24"), None
        rgb = self._to_rgb.reformat(vframe, format="rgb24")
        return self._scale.reformat(rgb, width=w, height=h, interpolation="AREA").to_ndarray(), size


def is_live(location: str) -> bool:
    return location.lower().startswith(LIVE_SCHEMES)


def default_stream_id(location: str) -> str:
    """File stem for files; the last path part of a URL (or the host) for cameras."""
    if is_live(location):
        rest = location.split("://", 1)[1].split("?", 1)[0]
        host, _, path = rest.partition("/")
        host = host.rsplit("@", 1)[-1].split(":")[0]
        tail = path.strip("/").replace("/", "-")
        return tail or host
    return Path(location).stem


@dataclass
class SourceCounters:
    decoded: int = 0
    corrupt: int = 0
    reconnects: int = 0


def _ffmpeg_message(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _set_threads(stream: av.VideoStream, threads: int, kind: str) -> None:
    """threads 0: FFmpeg picks; 1: decode on the calling thread only (the engine owns the cores)."""
    if threads == 1:
        stream.codec_context.thread_count = 1
        return
    stream.thread_type = kind
    if threads > 1:
        stream.codec_context.thread_count = threads


def _declared_seconds(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    return 0.0


class VideoFileSource:
    """Decodes a video file: every frame, in order, then EndOfStream(frames=N)."""

    live = False

    def __init__(self, path: str, stream_id: str, max_frames: int | None = None, decoder_threads: int = 0) -> None:
        self.path = path
        self.decoder_threads = decoder_threads
        self.name = stream_id
        self.stream_id = stream_id
        self.max_frames = max_frames
        self.counters = SourceCounters()
        self.pixels = PixelConverter()
        self.expected_frames = 0
        self.expected_seconds = 0.0
        self.frame_seconds = 0.0
        self._last_pts: float | None = None

    def check(self) -> None:
        """Open once to fail fast with one clear line (missing, not a video, no video track)."""
        if not Path(self.path).exists():
            raise SourceError(f"video file not found: {self.path}")
        if not Path(self.path).is_file():
            raise SourceError(f"not a file: {self.path}")
        container = self._open()
        container.close()

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(self.path, mode="r", timeout=10.0)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"cannot read {self.path} as a video ({_ffmpeg_message(exc)})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.path} has no video track")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.name is None:
            container.close()
            raise SourceError(f"{self.path}: video codec is not supported")
        self.expected_frames = int(stream.frames or 0)
        self.expected_seconds = _declared_seconds(container, stream)
        self.frame_seconds = float(1 / stream.average_rate) if stream.average_rate else 0.0
        return container

    def items(self, stopping: threading.Event) -> Iterator[Frame | EndOfStream]:
        container = self._open()
        stream = container.streams.video[0]
        _set_threads(stream, self.decoder_threads, "AUTO")
        index = 0
        ended_early = False
        try:
            packets = container.demux(stream)
            while not stopping.is_set():
                if self.max_frames is not None and index >= self.max_frames:
                    break
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as exc:
                    # Demuxing past a damaged region: keep going if the container lets us.
                    self.counters.corrupt += 1
                    log.warning("%s: unreadable data skipped (%s)", self.path, _ffmpeg_message(exc))
                    if isinstance(exc, av.error.EOFError):
                        break
                    continue
                for vframe in _decode(packet, self.counters):
                    if self.max_frames is not None and index >= self.max_frames:
                        break
                    yield self._frame(vframe, index)
                    index += 1
        finally:
            container.close()
        self.counters.decoded = index
        interrupted = stopping.is_set()
        if index == 0 and not interrupted:
            raise SourceError(f"{self.path}: no decodable video frames")
        limit_hit = self.max_frames is not None and index >= self.max_frames
        shortfall = None if interrupted or limit_hit else self._shortfall(index)
        yield EndOfStream(self.stream_id, index, interrupted=interrupted or shortfall is not None)
        if shortfall is not None:
            raise SourceError(f"{self.path} is truncated or damaged: {shortfall}")

    def _shortfall(self, decoded: int) -> str | None:
        """Why the file ended before its container said it would, or None if it did not."""
        if self.expected_frames:
            if decoded + self.counters.corrupt < self.expected_frames:
                return f"decoded {decoded} of {self.expected_frames} frames"
            return None
        # Containers without a frame count (Matroska, WebM) still declare their duration.
        if self.expected_seconds and self._last_pts is not None:
            margin = max(2 * self.frame_seconds, 0.1)
            if self._last_pts + margin < self.expected_seconds:
                return f"decoding stopped at {self._last_pts:.2f} s of {self.expected_seconds:.2f} s"
        return None

    def _frame(self, vframe: av.VideoFrame, index: int) -> Frame:
        frame = _frame(vframe, self.stream_id, index, lambda _pts: time.time(), self.pixels, live=False)
        if frame.pts is not None:
            self._last_pts = frame.pts if self._last_pts is None else max(self._last_pts, frame.pts)
        return frame


def _decode(packet: av.Packet, counters: SourceCounters) -> list[av.VideoFrame]:
    """The frames of one packet; a packet the decoder rejects is counted as corrupt and skipped."""
    try:
        return packet.decode()
    except av.error.FFmpegError:
        counters.corrupt += 1
        return []


def _frame(vframe: av.VideoFrame, stream_id: str, index: int, stamp: Callable[[float | None], float],
           pixels: PixelConverter, live: bool) -> Frame:
    pts = float(vframe.time) if vframe.time is not None else None
    image, source_size = pixels.convert(vframe)
    return Frame(stream_id=stream_id, index=index, pts=pts, time=stamp(pts), image=image, live=live,
                 source_size=source_size)


class CaptureClock:
    """Capture time of live frames from their timestamps, anchored at the first frame.

    Decode time would hide latency: a decoder that falls behind stamps late frames as fresh.
    The camera's own clock (pts) says when each frame was taken; it is anchored to the wall
    clock at the first frame of a connection and never allowed into the future.
    """

    def __init__(self) -> None:
        self._anchor: tuple[float, float] | None = None

    def capture_time(self, pts: float | None) -> float:
        now = time.time()
        if pts is None:
            return now
        if self._anchor is None:
            self._anchor = (now, pts)
        wall, first = self._anchor
        return min(now, wall + (pts - first))


class CameraSource:
    """Decodes an RTSP (or other network) stream; reconnects when the feed drops."""

    live = True

    def __init__(
        self,
        url: str,
        stream_id: str,
        open_timeout: float = 10.0,
        read_timeout: float = 10.0,
        reconnect_window: float = 60.0,
        max_frames: int | None = None,
        decoder_threads: int = 0,
    ) -> None:
        self.url = url
        self.decoder_threads = decoder_threads
        self.name = stream_id
        self.stream_id = stream_id
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.reconnect_window = reconnect_window
        self.max_frames = max_frames
        self.counters = SourceCounters()
        self.pixels = PixelConverter()
        self._first: av.container.InputContainer | None = None

    def _open(self) -> av.container.InputContainer:
        options = {"rtsp_transport": "tcp", "timeout": str(int(self.read_timeout * 1e6))}
        if not self.url.lower().startswith(("rtsp://", "rtsps://")):
            options = {"rw_timeout": str(int(self.read_timeout * 1e6))}
        try:
            container = av.open(self.url, mode="r", options=options, timeout=(self.open_timeout, self.read_timeout))
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open camera {self.url} ({_ffmpeg_message(exc)})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"camera {self.url} sends no video track")
        return container

    def check(self) -> None:
        """Connect once (kept for the run) so an unreachable camera fails before anything starts."""
        self._first = self._open()

    def items(self, stopping: threading.Event) -> Iterator[Frame]:
        container = self._first or self._open()
        self._first = None
        index = 0
        while not stopping.is_set():
            clock = CaptureClock()
            try:
                stream = container.streams.video[0]
                _set_threads(stream, self.decoder_threads, "SLICE")  # frame threads would add frames of latency
                for packet in container.demux(stream):
                    if stopping.is_set():
                        break
                    for vframe in _decode(packet, self.counters):
                        yield _frame(vframe, self.stream_id, index, clock.capture_time, self.pixels, live=True)
                        index += 1
                        self.counters.decoded = index
                        if self.max_frames is not None and index >= self.max_frames:
                            return
            except (av.error.FFmpegError, OSError) as exc:
                log.warning("camera %s: feed lost (%s)", self.url, _ffmpeg_message(exc))
            finally:
                container.close()
            if stopping.is_set():
                return
            container = self._reconnect(stopping)
            if container is None:
                return

    def _reconnect(self, stopping: threading.Event) -> av.container.InputContainer | None:
        deadline = time.monotonic() + self.reconnect_window
        delay = 0.5
        last = "no answer"
        while not stopping.is_set():
            try:
                container = self._open()
                self.counters.reconnects += 1
                log.warning("camera %s: reconnected", self.url)
                return container
            except SourceError as exc:
                last = str(exc)
            if time.monotonic() + delay > deadline:
                raise SourceError(f"camera {self.url} lost and not back after {self.reconnect_window:g} s ({last})")
            stopping.wait(delay)
            delay = min(delay * 2, 5.0)
        return None
