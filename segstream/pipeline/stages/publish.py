"""Publish stage: FrameResult / StreamStatus / EndOfStream -> every sink, with the per-stream
`dropped` count, and the stream's counters updated once an entry is really published.

With a Redis sink, "published" means the entry landed on Redis (the sink says so from its writer
thread); otherwise it means every sink took it. Watchers (the live viewer) see each FrameResult
after the sinks; they must be quick and must never block.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from segstream.pipeline.messages import EndOfStream, FrameResult, StreamStatus
from segstream.pipeline.progress import Progress
from segstream.pipeline.sinks import Sink
from segstream.pipeline.sinks.redis_stream import RedisStreamSink
from segstream.pipeline.streams import StreamRegistry
from segstream.pipeline.wire.entries import eos_message, frame_message, status_message

log = logging.getLogger(__name__)

Watcher = Callable[[FrameResult], None]


class Publish:
    name = "publish"
    take = 1

    def __init__(self, sinks: list[Sink], registry: StreamRegistry, progress: Progress) -> None:
        self.sinks = sinks
        self.registry = registry
        self.progress = progress
        self._last_index: dict[str, int] = {}
        self._closed = False
        self.close_timeout: float | None = None  # set by a shutdown: how long Redis may still take
        self._watchers: list[Watcher] = []
        self._lock = threading.Lock()
        self.redis = next((s for s in sinks if isinstance(s, RedisStreamSink)), None)
        if self.redis is not None:
            self.redis.on_published = self._landed
            self.redis.on_dropped = self._outbox_dropped

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Call `watcher(result)` after each frame is handed to the sinks; returns the unwatch."""
        with self._lock:
            self._watchers.append(watcher)

        def unwatch() -> None:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)

        return unwatch

    def start_stream(self, stream_id: str, first_frame: int = 0) -> None:
        """A stream (re)starts at `first_frame`: frames before it are not counted as dropped."""
        self._last_index[stream_id] = first_frame - 1

    def forget(self, stream_id: str) -> None:
        """A stream is over: drop its frame numbering."""
        self._last_index.pop(stream_id, None)

    def process(self, items: list[Any]) -> Iterable[Any]:
        for item in items:
            if isinstance(item, FrameResult):
                self._frame(item)
            elif isinstance(item, StreamStatus):
                message = status_message(item)
                for sink in self.sinks:
                    sink.write_status(item, message)
                if self.redis is None:
                    self._landed(item.stream_id, message)
            elif isinstance(item, EndOfStream):
                message = eos_message(item)
                for sink in self.sinks:
                    sink.end_stream(item, message)
                if self.redis is None:
                    self._landed(item.stream_id, message)
        return ()

    def _frame(self, result: FrameResult) -> None:
        frame = result.frame
        # Frame indices count every decoded frame, so a gap is exactly what the queues dropped.
        dropped = frame.index - self._last_index.get(frame.stream_id, -1) - 1
        self._last_index[frame.stream_id] = frame.index
        message = frame_message(result, dropped)
        if result.error is not None:
            state = self.registry.get(frame.stream_id)
            if state is not None:
                state.frame_failed(result.error)
        for sink in self.sinks:
            sink.write(result, message)
        if self.redis is None:
            self._landed(frame.stream_id, message)
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            try:
                watcher(result)
            except Exception:  # a viewer's bug must not stop publishing
                log.exception("watcher failed")

    def _landed(self, stream_id: str, message: dict[str, Any]) -> None:
        """An entry is published (on Redis when there is a Redis sink)."""
        state = self.registry.get(stream_id)
        if state is None:
            return
        if "frame" in message:
            state.frame_published(len(message["instances"]), message["time"], time.time() - message["time"])
            self.progress.frame(state)
        elif message.get("eos"):
            state.finish(message["frames"])
            self.progress.end(state)
        elif message.get("status") in ("ended", "down"):  # a camera's last entry: it is drained
            state.finish()

    def _outbox_dropped(self, stream_id: str, count: int) -> None:
        state = self.registry.get(stream_id)
        if state is not None:
            state.frames_dropped(count, "outbox")

    def flush(self) -> Iterable[Any]:
        self.close(self.close_timeout)
        return ()

    def close(self, timeout: float | None = None) -> None:
        """Close every sink; the Redis sink publishes what waits first (up to `timeout` s)."""
        if self._closed:
            return
        self._closed = True
        for sink in self.sinks:
            if sink is self.redis:
                self.redis.close(timeout)
            else:
                sink.close()
        self.progress.close()
