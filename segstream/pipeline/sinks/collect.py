"""In-process sink: keeps every FrameResult in memory (embedding segstream in a program, tests, benchmarks)."""

from __future__ import annotations

from typing import Any

from segstream.pipeline.messages import EndOfStream, FrameResult, StreamStatus


class CollectSink:
    """results: every FrameResult in publish order; ended: the EndOfStream markers seen;
    statuses: the StreamStatus changes of live streams."""

    def __init__(self) -> None:
        self.results: list[FrameResult] = []
        self.ended: list[EndOfStream] = []
        self.statuses: list[StreamStatus] = []

    def write(self, result: FrameResult, message: dict[str, Any]) -> None:
        self.results.append(result)

    def write_status(self, status: StreamStatus, message: dict[str, Any]) -> None:
        self.statuses.append(status)

    def end_stream(self, eos: EndOfStream, message: dict[str, Any]) -> None:
        self.ended.append(eos)

    def close(self) -> None:
        pass
