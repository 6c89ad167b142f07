"""Whether a stream may be added, and the source it opens: shared by every process that takes
streams from outside (serve's HTTP API through the fleet's control, a config's `streams:`).

    source = open_admitted(spec, config, "api")   # SourceRefused / SourceError, nothing opened

The refusals the HTTP API turns into answers are defined here, below both the service and the
fleet (which never import each other): StreamExists / UnknownStream (pipeline/streaming.py),
TooManyStreams (409 reason max_streams), StreamElsewhere (409 naming the process that runs it) and
BookUnavailable (503).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segstream.pipeline.sources.policy import Origin, SourceRefused, local_refusal, scheme_of
from segstream.pipeline.streams import SourceError

if TYPE_CHECKING:
    from segstream.pipeline.config import RunConfig
    from segstream.pipeline.stream_spec import Source, StreamSpec


class TooManyStreams(Exception):
    """The process (or the fleet's book) holds `serve.max_streams` streams already; the message says what to do."""


class StreamElsewhere(Exception):
    """The stream runs on another process and is not a camera of the book: only that process may stop it."""

    def __init__(self, stream_id: str, worker: str) -> None:
        super().__init__(f"stream {stream_id!r} is a local stream of {worker}: DELETE it there")
        self.stream_id = stream_id
        self.worker = worker


class BookUnavailable(Exception):
    """The shared camera book cannot be read or written now (Redis away); the message says so."""


def open_admitted(spec: "StreamSpec", config: "RunConfig", origin: Origin) -> "Source":
    """The source for `spec` once the source policy admitted it (raises SourceRefused before anything
    is opened); a file must be readable now (SourceError), a camera is never waited for (an
    unreachable one is retried). From the API, a missing/unreadable local file reads like one
    outside the media root: one text, so the API cannot map the disk."""
    from segstream.pipeline.stream_spec import make_source

    source = make_source(spec, config, origin)
    if not source.live:
        try:
            source.check()
        except SourceError:
            if origin == "api" and not scheme_of(spec.url):
                raise SourceRefused(local_refusal(origin)) from None
            raise
    return source
