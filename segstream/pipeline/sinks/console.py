"""Console sink: one line per frame on stdout."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from segstream.pipeline.messages import EndOfStream, FrameResult, StreamStatus
from segstream.pipeline.wire.entries import describe


class ConsoleSink:
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def write(self, result: FrameResult, message: dict[str, Any]) -> None:
        print(describe(message), file=self.out, flush=True)

    def write_status(self, status: StreamStatus, message: dict[str, Any]) -> None:
        print(describe(message), file=self.out, flush=True)

    def end_stream(self, eos: EndOfStream, message: dict[str, Any]) -> None:
        print(describe(message), file=self.out, flush=True)

    def close(self) -> None:
        pass
