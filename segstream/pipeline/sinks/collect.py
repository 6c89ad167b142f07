"""In-process sink: keeps every FrameResult in memory (embedding segstream in a program, tests, benchmarks)."""

from __future__ import annotations

from typing import Any

from segstream.pipeline.messages import EndOfStream, FrameResult


class CollectSink:
    """results: every FrameResult in publish order; ended: the EndOfStream markers seen."""

    def __init__(self) -> None:
        self.results: list[FrameResult] = []
        self.ended: list[EndOfStream] = []

    def write(self, result: FrameResult, message: dict[str, Any]) -> None:
        self.results.append(result)

    def end_stream(self, eos: EndOfStream, message: dict[str, Any]) -> None:
        self.ended.append(eos)

    def close(self) -> None:
        pass
