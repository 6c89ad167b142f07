"""Sources: video files and live cameras decoded with PyAV into Frame messages.

A file source (a local path or an http(s):// URL) yields every decodable frame in order and then
one EndOfStream. A corrupt packet in the middle of a file is skipped and counted. A camera source
is supervised: it re-joins a lost or stalled feed with exponential backoff and jitter, for ever
unless told to give up, and says every change of its state (StreamStatus, see `Supervision`).
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

from redis.backoff import EqualJitterBackoff

from segstream.pipeline.sources.locations import is_remote, redact, redact_text
from segstream.pipeline.messages import EndOfStream, Frame, StreamStatus
from segstream.pipeline.sources.policy import protocol_whitelist
from segstream.pipeline.streams import SourceCounters, SourceError, StreamState

log = logging.getLogger(__name__)


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

    def __init__(self, path: str, stream_id: str, max_frames: int | None = None, decoder_threads: int = 0,
                 read_timeout: float = 10.0, start_frame: int | None = None) -> None:
        self.path = path
        self.start_frame = start_frame  # frames before it are decoded and discarded (numbering kept)
        self.shown = redact(path)
        self.read_timeout = read_timeout
        self.state = StreamState(stream_id, self.shown, "file")
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
        if not is_remote(self.path):
            if not Path(self.path).exists():
                raise SourceError(f"video file not found: {self.path}")
            if not Path(self.path).is_file():
                raise SourceError(f"not a file: {self.path}")
        container = self._open()
        container.close()

    def _open(self) -> av.container.InputContainer:
        # Only the protocols this scheme needs: a redirect or a playlist cannot reach file:, concat:, ...
        options = {"protocol_whitelist": protocol_whitelist(self.path)}
        if is_remote(self.path):  # a dropped connection resumes where it was, not from the start
            options.update({"reconnect": "1", "reconnect_on_network_error": "1", "reconnect_delay_max": "5",
                            "rw_timeout": str(int(self.read_timeout * 1e6))})
        try:
            container = av.open(self.path, mode="r", options=options, timeout=(self.read_timeout, self.read_timeout))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            reason = redact_text(_ffmpeg_message(exc), self.path)
            raise SourceError(f"cannot read {self.shown} as a video ({reason})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.shown} has no video track")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.name is None:
            container.close()
            raise SourceError(f"{self.shown}: video codec is not supported")
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
                    log.warning("%s: unreadable data skipped (%s)", self.shown, redact_text(_ffmpeg_message(exc), self.path))
                    if isinstance(exc, av.error.EOFError):
                        break
                    continue
                for vframe in _decode(packet, self.counters):
                    if self.max_frames is not None and index >= self.max_frames:
                        break
                    if self.start_frame is not None and index < self.start_frame:
                        index += 1  # resuming a file: published already (fleet jobs)
                        continue
                    yield self._frame(vframe, index)
                    index += 1
        finally:
            container.close()
        self.counters.decoded = index
        interrupted = stopping.is_set()
        self.state.set_state("ended")
        if index == 0 and not interrupted:
            raise SourceError(f"{self.shown}: no decodable video frames")
        limit_hit = self.max_frames is not None and index >= self.max_frames
        shortfall = None if interrupted or limit_hit else self._shortfall(index)
        error = None if shortfall is None else f"{self.shown} is truncated or damaged: {shortfall}"
        yield EndOfStream(self.stream_id, index, interrupted=interrupted or shortfall is not None, error=error)
        if error is not None:
            raise SourceError(error)

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
        if index == (self.start_frame or 0):
            self.state.set_state("live")
        self.state.frame_decoded()
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


@dataclass
class Supervision:
    """How a camera is kept alive (config section `source`).

    open_timeout: seconds to connect; stall_timeout: seconds without a decoded frame while the
    connection looks open before it counts as lost; backoff_initial/backoff_max: the first and the
    largest wait between attempts (exponential, equal jitter); give_up_after: seconds of failed
    attempts before the camera is declared `down` and left alone (None: never give up).
    """

    open_timeout: float = 10.0
    stall_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 5.0
    give_up_after: float | None = None


class CameraSource:
    """Decodes a live feed (RTSP, RTMP, UDP, SRT, /dev/video*) under supervision.

    States (StreamState.state, and a StreamStatus message down the pipeline at each change):
    connecting -> live -> reconnecting -> live ... ; down when `give_up_after` ran out; ended
    when stopped. Frame numbers continue across reconnects. Every change is logged once.
    """

    live = True

    def __init__(self, url: str, stream_id: str, supervision: Supervision | None = None,
                 max_frames: int | None = None, decoder_threads: int = 0, start_frame: int | None = None) -> None:
        self.url = url
        self.start_frame = start_frame  # first frame number (a camera taken over continues its numbering)
        self.shown = redact(url)
        self.decoder_threads = decoder_threads
        self.name = stream_id
        self.stream_id = stream_id
        self.supervision = supervision or Supervision()
        self.max_frames = max_frames
        self.counters = SourceCounters()
        self.pixels = PixelConverter()
        self.state = StreamState(stream_id, self.shown, "live")
        self._first: av.container.InputContainer | None = None
        self._backoff = EqualJitterBackoff(cap=self.supervision.backoff_max, base=self.supervision.backoff_initial)

    def _open(self) -> av.container.InputContainer:
        sup = self.supervision
        stall_us = str(int(sup.stall_timeout * 1e6))
        lowered = self.url.lower()
        options: dict[str, str] = {}
        fmt = None
        if lowered.startswith(("rtsp://", "rtsps://")):
            options = {"rtsp_transport": "tcp", "timeout": stall_us}
        elif lowered.startswith("/dev/video"):
            fmt = "v4l2"
        else:
            options = {"rw_timeout": stall_us}
        # Only the protocols this scheme needs: an RTSP redirect cannot reach file:, gopher:, ...
        options["protocol_whitelist"] = protocol_whitelist(self.url)
        try:
            container = av.open(self.url, mode="r", format=fmt, options=options,
                                timeout=(sup.open_timeout, sup.stall_timeout))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"cannot open camera {self.shown} ({redact_text(_ffmpeg_message(exc), self.url)})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"camera {self.shown} sends no video track")
        return container

    def check(self) -> None:
        """Connect once (kept for the run) so an unreachable camera fails before anything starts."""
        self._first = self._open()

    def _status(self, state: str, error: str | None = None, force: bool = False) -> StreamStatus | None:
        """Enter `state`; the StreamStatus to publish, or None when nothing changed."""
        if not self.state.set_state(state, error) and not force:  # type: ignore[arg-type]
            return None
        return StreamStatus(self.stream_id, state, self.state.since, self.state.reconnects, self.shown, error)

    def items(self, stopping: threading.Event) -> Iterator[Frame | StreamStatus]:
        yield self._status("connecting", force=True)
        yield from self._feed(stopping)
        # Not in a `finally`: a generator closed from outside must not yield again.
        if self.state.state != "down":
            status = self._status("ended")
            if status:
                yield status

    def _feed(self, stopping: threading.Event) -> Iterator[Frame | StreamStatus]:
        container, self._first = self._first, None
        index = self.start_frame or 0
        lost_at: float | None = None
        try:
            while not stopping.is_set():
                if container is None:
                    container = yield from self._connect(stopping, lost_at)
                    if container is None:
                        return
                reason = None
                clock = CaptureClock()
                last_frame = time.monotonic()
                try:
                    stream = container.streams.video[0]
                    _set_threads(stream, self.decoder_threads, "SLICE")  # frame threads add frames of latency
                    for packet in container.demux(stream):
                        if stopping.is_set():
                            break
                        for vframe in _decode(packet, self.counters):
                            if self.state.state != "live":
                                if lost_at is not None:
                                    log.warning("camera %s (%s): live again after %.1f s", self.stream_id,
                                                self.shown, time.monotonic() - lost_at)
                                status = self._status("live")
                                if status:
                                    yield status
                            yield _frame(vframe, self.stream_id, index, clock.capture_time, self.pixels, live=True)
                            self.state.frame_decoded()
                            last_frame = time.monotonic()
                            index += 1
                            self.counters.decoded = index
                            if self.max_frames is not None and index - (self.start_frame or 0) >= self.max_frames:
                                return
                        # Packets without pictures (a broken encoder) look alive to the demuxer.
                        if time.monotonic() - last_frame > self.supervision.stall_timeout:
                            reason = f"no frame for {self.supervision.stall_timeout:g} s"
                            break
                    else:
                        reason = "the feed ended"
                except (av.error.FFmpegError, OSError) as exc:
                    reason = redact_text(_ffmpeg_message(exc), self.url)
                finally:
                    container.close()
                    container = None
                if stopping.is_set():
                    return
                lost_at = time.monotonic()
                log.warning("camera %s (%s): feed lost (%s); reconnecting", self.stream_id, self.shown, reason)
                status = self._status("reconnecting", reason)
                if status:
                    yield status
        finally:
            if container is not None:
                container.close()

    def _connect(self, stopping: threading.Event, lost_at: float | None):
        """Attempts until one succeeds (returns the container), stop is asked or `give_up_after`
        runs out (returns None, state `down`). A generator: yields the StreamStatus it causes."""
        sup = self.supervision
        started = lost_at or time.monotonic()
        failures = 0
        while not stopping.is_set():
            try:
                container = self._open()
            except SourceError as exc:
                failures += 1
                if failures == 1 and lost_at is None:
                    log.warning("%s; retrying in the background", exc)
                    status = self._status("reconnecting", str(exc))
                    if status:
                        yield status
                if sup.give_up_after is not None and time.monotonic() - started > sup.give_up_after:
                    log.error("camera %s (%s): giving up after %g s without a connection (%s)",
                              self.stream_id, self.shown, sup.give_up_after, exc)
                    status = self._status("down", str(exc))
                    if status:
                        yield status
                    return None
                stopping.wait(self._backoff.compute(failures))
                continue
            if lost_at is not None or failures:
                self.state.reconnected()
                self.counters.reconnects += 1
            return container
        return None
