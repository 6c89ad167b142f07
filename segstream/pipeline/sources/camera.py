"""Camera source: a live feed (RTSP, RTMP, UDP, SRT, /dev/video*) decoded with PyAV under supervision.

The source re-joins a lost or stalled feed with exponential backoff and jitter, for ever unless
told to give up, and says every change of its state (StreamStatus, see `Supervision`). Frames are
stamped with their capture time (`CaptureClock`), not their decode time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import av
import av.error
from redis.backoff import EqualJitterBackoff

from segstream.pipeline.messages import Frame, StreamStatus
from segstream.pipeline.sources.decoding import PixelConverter, decode_packet, ffmpeg_message, to_frame, set_threads
from segstream.pipeline.sources.locations import redact, redact_text
from segstream.pipeline.sources.policy import protocol_whitelist
from segstream.pipeline.streams import SourceCounters, SourceError, StreamState

log = logging.getLogger(__name__)


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
    first_track_id: int | None = None  # the stream's first new track id (a stream taken over; StreamSpec)

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
            raise SourceError(f"cannot open camera {self.shown} ({redact_text(ffmpeg_message(exc), self.url)})") from None
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
                    set_threads(stream, self.decoder_threads, "SLICE")  # frame threads add frames of latency
                    for packet in container.demux(stream):
                        if stopping.is_set():
                            break
                        for vframe in decode_packet(packet, self.counters):
                            if self.state.state != "live":
                                if lost_at is not None:
                                    log.warning("camera %s (%s): live again after %.1f s", self.stream_id,
                                                self.shown, time.monotonic() - lost_at)
                                status = self._status("live")
                                if status:
                                    yield status
                            yield to_frame(vframe, self.stream_id, index, clock.capture_time, self.pixels, live=True)
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
                    reason = redact_text(ffmpeg_message(exc), self.url)
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
