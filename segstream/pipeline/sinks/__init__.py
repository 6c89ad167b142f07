"""Where FrameResults go: Redis streams, an annotated video, the console."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # consumers read the wire without torch: messages.py imports it
    from segstream.pipeline.messages import EndOfStream, FrameResult, StreamStatus


class SinkError(RuntimeError):
    """A sink cannot take results; the message is one line for the user."""


class Sink(Protocol):
    def write(self, result: FrameResult, message: dict[str, Any]) -> None:
        """Take one frame's result and its schema-v1 message."""
        ...

    def write_status(self, status: StreamStatus, message: dict[str, Any]) -> None:
        """A live stream changed state; `message` is its schema-v1 status entry."""
        ...

    def end_stream(self, eos: EndOfStream, message: dict[str, Any]) -> None:
        """A file source ended after all its frames were written."""
        ...

    def close(self) -> None: ...
