"""The control plane: streams added and removed on a running pipeline, and remembered.

Config streams (the config's `streams:` list) are added at start and are not written to Redis: the
config file remembers them. Streams added over the API are remembered in the StreamBook until they
are deleted or end on their own (a file reaching its end, a camera reaching `max_frames`). A
remembered stream that was in flight when the service stopped is added again on the next start.

At most `max_streams` streams are held at once (running, or ended and not yet deleted; config,
API and remembered ones alike): each running stream is a decoder thread and a queue, so an
unbounded number is a way to stop the service. Past it, adding is refused with TooManyStreams
(the API answers 409 with `"reason": "max_streams"`); a remembered stream past it is skipped
with a warning (it stays remembered until deleted).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from segstream.pipeline.sources.policy import Origin, SourceRefused, local_refusal, scheme_of
from segstream.pipeline.stream_spec import StreamExists, StreamSpec, UnknownStream, make_source
from segstream.pipeline.streams import SourceError
from segstream.service.stream_book import StreamBook

log = logging.getLogger("segstream.service")


class TooManyStreams(Exception):
    """The service holds `max_streams` streams already; the message says what to do."""


class StreamControl:
    """What the HTTP API calls; thread-safe (handlers run on a thread pool). `max_streams` None: no cap."""

    def __init__(self, pipeline: Any, book: StreamBook | None = None, config_streams: list[StreamSpec] | None = None,
                 max_streams: int | None = None) -> None:
        self.pipeline = pipeline
        self.max_streams = max_streams
        self.book = book
        self.config_streams = list(config_streams or [])
        self._remembered: set[str] = set()
        self._lock = threading.Lock()
        self._adding = threading.Lock()  # never held by the pipeline's threads (_on_state takes _lock)
        self._stopping = False

    def start(self) -> None:
        """Start the pipeline, add the config's streams, then (in the background, once Redis
        answers) the remembered ones."""
        self.pipeline.start()
        for spec in self.config_streams:  # the config file is trusted: local files anywhere (or under media_root)
            self.pipeline.add_stream(spec)
        if self.book is not None:
            self.book.start(self._restore)

    def _restore(self, specs: list[dict[str, Any]]) -> None:
        for raw in specs:
            try:
                spec = StreamSpec.model_validate(raw)
            except ValueError as exc:
                log.warning("ignoring a remembered stream that no longer validates (%s): %s", raw.get("id"), str(exc).splitlines()[0])
                continue
            try:
                # Remembered specs came over the API: judged again, by today's policy.
                self._add(spec, remember=False, origin="api")
                log.info("stream %s added again (remembered from before the restart)", spec.id)
            except SourceRefused as exc:
                log.warning("skipping remembered stream %s: refused by the source policy (%s)", spec.id, exc)
            except StreamExists:
                pass  # added over the API or by the config meanwhile
            except TooManyStreams as exc:
                log.warning("not adding remembered stream %s: %s", spec.id, exc)
            except Exception as exc:  # a bad remembered stream must not stop the others
                log.warning("cannot add remembered stream %s: %s", spec.id, exc)

    def add(self, spec: StreamSpec) -> dict[str, Any]:
        """Add and remember a stream; raises StreamExists for a duplicate id."""
        return self._add(spec, remember=True, origin="api")

    def _add(self, spec: StreamSpec, remember: bool, origin: Origin = "api") -> dict[str, Any]:
        """Raises SourceRefused (the source policy said no: nothing opened, nothing remembered),
        SourceError (a file that cannot be read), StreamExists, TooManyStreams."""
        with self._adding:  # one add at a time: two concurrent POSTs cannot both take the last place
            if spec.id in self.pipeline.registry:
                raise StreamExists(spec.id)
            held = len(self.pipeline.registry.all())
            if self.max_streams is not None and held >= self.max_streams:
                raise TooManyStreams(f"the service holds {held} streams, its limit (serve.max_streams = "
                                     f"{self.max_streams}): DELETE one first (ended streams count until deleted)")
            source = make_source(spec, self.pipeline.config, origin)
            if not source.live:  # a missing or unreadable file is the caller's mistake: SourceError, one line
                try:             # (cameras are never waited for: an unreachable one is retried)
                    source.check()
                except SourceError:
                    if origin == "api" and not scheme_of(spec.url):
                        # Missing, a folder, not a video: one text, so the API cannot map the disk.
                        raise SourceRefused(local_refusal(origin)) from None
                    raise
            state = self.pipeline.add_source(source, gating=spec.gating)
        with self._lock:
            self._remembered.add(spec.id)
        if remember and self.book is not None:
            self.book.remember(spec.model_dump(mode="json"))
        state.on_change(self._on_state)
        return state.snapshot()

    def _on_state(self, state: Any) -> None:
        # A stream that ended on its own is done; replaying it after a restart would repeat it.
        if state.state == "ended" and not self._stopping and self.book is not None:
            with self._lock:
                if state.stream_id not in self._remembered:
                    return
                self._remembered.discard(state.stream_id)
            self.book.forget(state.stream_id)

    def remove(self, stream_id: str) -> dict[str, Any]:
        """Stop a stream (drained: a file gets its EOS entry) and forget it; raises UnknownStream."""
        state = self.pipeline.registry.get(stream_id)  # kept: its counters are final once drained
        if state is None:
            raise UnknownStream(stream_id)
        with self._lock:
            self._remembered.discard(stream_id)  # its `ended` must not forget it twice
        self.pipeline.remove_stream(stream_id)
        if self.book is not None:
            self.book.forget(stream_id)
        return state.snapshot()

    def get(self, stream_id: str) -> dict[str, Any]:
        state = self.pipeline.registry.get(stream_id)
        if state is None:
            raise UnknownStream(stream_id)
        return state.snapshot()

    def list(self) -> list[dict[str, Any]]:
        return self.pipeline.registry.snapshot()

    def stop(self, timeout: float | None = None) -> bool:
        """Drain every stream and close the pipeline; streams stay remembered for the next start."""
        self._stopping = True
        try:
            drained = self.pipeline.shutdown(timeout)  # past the timeout it aborts
        finally:
            self.pipeline.close()
            if self.book is not None:
                self.book.close()
        return drained
