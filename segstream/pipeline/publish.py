"""Publish stage: FrameResult / EndOfStream -> every sink, with the per-stream `dropped` count."""

from __future__ import annotations

from typing import Any, Iterable

from segstream.pipeline.messages import EndOfStream, FrameResult
from segstream.pipeline.progress import Progress
from segstream.pipeline.sinks import Sink
from segstream.pipeline.wire import eos_message, frame_message


class Publish:
    name = "publish"
    take = 1

    def __init__(self, sinks: list[Sink], progress: Progress) -> None:
        self.sinks = sinks
        self.progress = progress
        self._last_index: dict[str, int] = {}
        self._closed = False

    def process(self, items: list[Any]) -> Iterable[Any]:
        for item in items:
            if isinstance(item, FrameResult):
                self._frame(item)
            elif isinstance(item, EndOfStream):
                message = eos_message(item)
                for sink in self.sinks:
                    sink.end_stream(item, message)
                self.progress.end(item.stream_id, item.frames)
        return ()

    def _frame(self, result: FrameResult) -> None:
        frame = result.frame
        # Frame indices count every decoded frame, so a gap is exactly what the queues dropped.
        dropped = frame.index - self._last_index.get(frame.stream_id, -1) - 1
        self._last_index[frame.stream_id] = frame.index
        message = frame_message(result, dropped)
        for sink in self.sinks:
            sink.write(result, message)
        self.progress.frame(frame.stream_id, len(result.instances), dropped, result.latency)

    def flush(self) -> Iterable[Any]:
        self.close()
        return ()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.progress.close()
        for sink in self.sinks:
            sink.close()
