"""What each stream is doing right now: its state, counters and latency, for status lines,
status entries on Redis, the HTTP API and the metrics.

A `StreamState` is written by the stages that see the stream (the source sets the state and
counts decoded frames and reconnects; publishing counts published and dropped frames and records
latency) and read by anyone (the progress line, `segstream serve`'s API and /metrics). Counters
only grow; readers take `snapshot()`, a plain JSON-able dict, so no reader ever holds a lock
while a writer waits. Nothing here knows about tensors or Redis.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

StateName = Literal["connecting", "live", "reconnecting", "down", "ended"]
Kind = Literal["file", "live"]

#: Capture -> publish latency buckets (seconds) of the histogram kept per stream.
LATENCY_BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Reasons a frame is dropped: `queue` (a camera outpaced the engine: the oldest waiting frame
#: made room), `outbox` (Redis was away longer than the result outbox holds), `error` is not a
#: drop (frames that failed are published with an `error` field).
DROP_REASONS = ("queue", "outbox")


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message is one line for the user."""


@dataclass
class SourceCounters:
    """What a source met: frames decoded, corrupt packets skipped, reconnections."""

    decoded: int = 0
    corrupt: int = 0
    reconnects: int = 0


@dataclass
class StreamState:
    """Live view of one stream. Times are unix seconds; rates are over the last `window` s."""

    stream_id: str
    url: str  # password redacted
    kind: Kind
    state: StateName = "connecting"
    since: float = field(default_factory=time.time)
    reconnects: int = 0
    decoded: int = 0
    published: int = 0
    instances: int = 0
    errors: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {r: 0 for r in DROP_REASONS})
    last_frame_time: float | None = None  # capture time of the newest published frame
    last_error: str | None = None
    error: str | None = None  # why the stream ended early (its source failed), one line; None: it did not
    expected_frames: int = 0  # files: frames the container declares (0: unknown)
    decoder: Literal["cpu", "nvdec"] = "cpu"  # where the source decodes (nvdec: on the GPU, pipeline/sources/nvdec.py)
    eos_frames: int | None = None  # files: the frame count of the published EOS entry
    gating: bool = False  # motion gating is on for this stream (pipeline/stages/gating.py)
    inferred: int = 0  # frames the gate sent to the engine (all of them with gating off)
    gated: int = 0  # frames the gate skipped: published with the last inferred instances
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None  # monotonic time the stream ended (run summaries)
    window: float = 10.0
    _latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2048), repr=False)
    _bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1), repr=False)
    _latency_sum: float = 0.0
    _in_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096), repr=False)
    _out_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _listeners: list[Callable[["StreamState"], None]] = field(default_factory=list, repr=False)

    # -- written by the source -------------------------------------------------------------
    def set_state(self, state: StateName, error: str | None = None) -> bool:
        """Move to `state`; returns False (and does nothing) when already there."""
        with self._lock:
            if state == self.state:
                return False
            self.state, self.since = state, time.time()
            if error is not None:
                self.last_error = error
        for listener in list(self._listeners):
            listener(self)
        return True

    def on_change(self, listener: Callable[["StreamState"], None]) -> None:
        """Call `listener(state)` after every state change (from the source's thread)."""
        self._listeners.append(listener)

    def frame_decoded(self) -> None:
        with self._lock:
            self.decoded += 1
            self._in_times.append(time.monotonic())

    # -- written by the gate ----------------------------------------------------------------
    def frame_gated(self, inferred: bool) -> None:
        """The gate sent a frame to the engine (inferred) or skipped it."""
        with self._lock:
            if inferred:
                self.inferred += 1
            else:
                self.gated += 1

    # -- written by publishing -------------------------------------------------------------
    def frame_published(self, instances: int, capture_time: float, latency: float) -> None:
        """One frame's entry reached every sink; latency = publish time - capture time (s)."""
        with self._lock:
            self.published += 1
            self.instances += instances
            self.last_frame_time = capture_time
            self._out_times.append(time.monotonic())
            self._latencies.append(latency)
            self._latency_sum += latency
            self._bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1

    def frames_dropped(self, count: int, reason: str) -> None:
        if count > 0:
            with self._lock:
                self.dropped[reason] = self.dropped.get(reason, 0) + count

    def frame_failed(self, error: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = error

    def fail(self, error: str) -> None:
        """The stream's source failed and the stream is over: `error` is the one-line reason."""
        with self._lock:
            self.error = self.last_error = error

    def finish(self, eos_frames: int | None = None) -> None:
        with self._lock:  # the publish stage and Redis' writer thread both finish streams
            if eos_frames is not None:
                self.eos_frames = eos_frames
            if self.finished is None:
                self.finished = time.monotonic()

    def reconnected(self) -> None:
        with self._lock:
            self.reconnects += 1

    # -- read by anyone --------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self.kind == "live"

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def fps(self) -> float:
        """Frames published per second over the stream's whole life so far."""
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.published / elapsed if elapsed > 0 else 0.0

    @property
    def mean_latency(self) -> float:
        return self._latency_sum / self.published if self.published else 0.0

    def _rate(self, times: collections.deque, now: float) -> float:
        start = now - self.window
        recent = len(times) - bisect.bisect_left(times, start)
        return recent / self.window

    def latency_histogram(self) -> tuple[list[tuple[float, int]], float, int]:
        """Cumulative ([(upper bound, count)] ending with +inf), sum, count: Prometheus' shape."""
        with self._lock:
            counts, total = list(self._bucket_counts), self._latency_sum
        cumulative, running = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts):
            running += n
            cumulative.append((bound, running))
        return cumulative, total, running

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy: what GET /streams/{id} returns."""
        now = time.monotonic()
        with self._lock:
            latencies = sorted(self._latencies)
            out = {
                "id": self.stream_id, "url": self.url, "kind": self.kind, "state": self.state,
                "since": round(self.since, 3), "reconnects": self.reconnects,
                "frames_decoded": self.decoded, "frames_published": self.published,
                "instances": self.instances, "dropped": dict(self.dropped), "errors": self.errors,
                "fps_in": round(self._rate(self._in_times, now), 2),
                "fps_out": round(self._rate(self._out_times, now), 2),
                "last_frame_time": self.last_frame_time, "last_error": self.last_error, "decoder": self.decoder,
                "gating": self.gating, "frames_inferred": self.inferred, "frames_gated": self.gated, "error": self.error,
            }
        out["latency_p50"] = _quantile(latencies, 0.50)
        out["latency_p99"] = _quantile(latencies, 0.99)
        return out


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


class StreamRegistry:
    """Every stream of a run or service by id, in the order they were added."""

    def __init__(self) -> None:
        self._streams: dict[str, StreamState] = {}
        self._lock = threading.Lock()

    def add(self, state: StreamState) -> StreamState:
        with self._lock:
            if state.stream_id in self._streams:
                raise KeyError(state.stream_id)
            self._streams[state.stream_id] = state
        return state

    def ended(self) -> list[StreamState]:
        """Streams whose last entry was published, oldest end first."""
        with self._lock:
            done = [s for s in self._streams.values() if s.finished is not None]
        return sorted(done, key=lambda s: s.finished or 0.0)

    def remove(self, stream_id: str) -> StreamState | None:
        with self._lock:
            return self._streams.pop(stream_id, None)

    def get(self, stream_id: str) -> StreamState | None:
        return self._streams.get(stream_id)

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def all(self) -> list[StreamState]:
        with self._lock:
            return list(self._streams.values())

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.snapshot() for s in self.all()]
