"""File source: a video file (a local path or an http(s):// URL) decoded with PyAV into Frame messages.

It yields every decodable frame in order and then one EndOfStream. A corrupt packet in the middle
of a file is skipped and counted; a file that ends before its container said it would is
"truncated or damaged" (the EndOfStream carries the error, then SourceError is raised).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Iterator

import av
import av.error

from segstream.pipeline.messages import EndOfStream, Frame
from segstream.pipeline.sources.decoding import (PixelConverter, declared_seconds, decode_packet, ffmpeg_message,
                                                 to_frame, set_threads)
from segstream.pipeline.sources.locations import is_remote, redact, redact_text
from segstream.pipeline.sources.policy import protocol_whitelist
from segstream.pipeline.streams import SourceCounters, SourceError, StreamState

log = logging.getLogger(__name__)


class VideoFileSource:
    """Decodes a video file: every frame, in order, then EndOfStream(frames=N)."""

    live = False
    first_track_id: int | None = None  # the stream's first new track id (a stream taken over; StreamSpec)

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
            reason = redact_text(ffmpeg_message(exc), self.path)
            raise SourceError(f"cannot read {self.shown} as a video ({reason})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.shown} has no video track")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.name is None:
            container.close()
            raise SourceError(f"{self.shown}: video codec is not supported")
        self.expected_frames = int(stream.frames or 0)
        self.expected_seconds = declared_seconds(container, stream)
        self.frame_seconds = float(1 / stream.average_rate) if stream.average_rate else 0.0
        return container

    def items(self, stopping: threading.Event) -> Iterator[Frame | EndOfStream]:
        container = self._open()
        stream = container.streams.video[0]
        set_threads(stream, self.decoder_threads, "AUTO")
        index = 0
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
                    log.warning("%s: unreadable data skipped (%s)", self.shown, redact_text(ffmpeg_message(exc), self.path))
                    if isinstance(exc, av.error.EOFError):
                        break
                    continue
                for vframe in decode_packet(packet, self.counters):
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
        frame = to_frame(vframe, self.stream_id, index, lambda _pts: time.time(), self.pixels, live=False)
        if index == (self.start_frame or 0):
            self.state.set_state("live")
        self.state.frame_decoded()
        if frame.pts is not None:
            self._last_pts = frame.pts if self._last_pts is None else max(self._last_pts, frame.pts)
        return frame
