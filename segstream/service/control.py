"""What the HTTP app calls to read and change streams: the StreamsControl protocol, and StreamControl,
the streams of one pipeline in this process (`segstream run --http`, read-only there).

A fleet process (`segstream serve`, `segstream worker --http`) brings its own implementation,
segstream.fleet.control.FleetControl (every stream of the fleet, the camera book); the command
wires it in (the service never imports the fleet, nor the fleet the service).

Errors the app maps to answers (pipeline/admission.py, pipeline/streaming.py): StreamExists (409),
UnknownStream (404), TooManyStreams (409, reason max_streams), StreamElsewhere (409, naming the
process that runs the stream), SourceRefused / SourceError (400), BookUnavailable (503: Redis away).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from segstream.pipeline.admission import TooManyStreams, open_admitted
from segstream.pipeline.stream_spec import StreamExists, StreamSpec, UnknownStream

__all__ = ["StreamsControl", "StreamControl", "TooManyStreams"]


class StreamsControl(Protocol):
    """Thread-safe: the handlers run on a thread pool. `pipeline`: the StreamingPipeline of this
    process (the viewer, /readyz and /metrics look at it)."""

    pipeline: Any

    def list(self) -> list[dict[str, Any]]: ...  # every stream, as GET /streams lists them
    def get(self, stream_id: str) -> dict[str, Any]: ...  # raises UnknownStream
    def add(self, spec: StreamSpec) -> dict[str, Any]: ...  # the new stream, as listed
    def remove(self, stream_id: str) -> dict[str, Any]: ...  # its last state; drained
    def status(self) -> dict[str, Any]: ...  # GET /status: what this process does
    def ready(self) -> bool: ...  # GET /readyz
    def redis(self) -> tuple[bool, float | None]: ...  # Redis answers?, unix time it went away (None: up)


class StreamControl:
    """The streams of one pipeline (no book: nothing outlives the process). `max_streams` None: no cap."""

    def __init__(self, pipeline: Any, max_streams: int | None = None) -> None:
        self.pipeline = pipeline
        self.max_streams = max_streams
        self._adding = threading.Lock()

    def add(self, spec: StreamSpec) -> dict[str, Any]:
        """Raises SourceRefused (nothing opened), SourceError, StreamExists, TooManyStreams."""
        with self._adding:  # one add at a time: two concurrent adds cannot both take the last place
            if spec.id in self.pipeline.registry:
                raise StreamExists(spec.id)
            held = len(self.pipeline.registry.all())
            if self.max_streams is not None and held >= self.max_streams:
                raise TooManyStreams(f"the service holds {held} streams, its limit (serve.max_streams = "
                                     f"{self.max_streams}): DELETE one first (ended streams count until deleted)")
            state = self.pipeline.add_source(open_admitted(spec, self.pipeline.config, "api"), gating=spec.gating)
        return state.snapshot()

    def remove(self, stream_id: str) -> dict[str, Any]:
        """Stop a stream (drained: a file gets its EOS entry); raises UnknownStream."""
        state = self.pipeline.registry.get(stream_id)  # kept: its counters are final once drained
        if state is None:
            raise UnknownStream(stream_id)
        self.pipeline.remove_stream(stream_id)
        return state.snapshot()

    def get(self, stream_id: str) -> dict[str, Any]:
        state = self.pipeline.registry.get(stream_id)
        if state is None:
            raise UnknownStream(stream_id)
        return state.snapshot()

    def list(self) -> list[dict[str, Any]]:
        return self.pipeline.registry.snapshot()

    def status(self) -> dict[str, Any]:
        return {"streams": self.list()}

    def ready(self) -> bool:
        return bool(self.pipeline.ready())

    def redis(self) -> tuple[bool, float | None]:
        return bool(self.pipeline.redis_up), self.pipeline.redis_down_since
