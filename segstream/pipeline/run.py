"""A segstream run: the given sources through a StreamingPipeline until the last file ends
(cameras: until drained). Signals are the command line's (segstream.commands.lifecycle).

Everything that can fail on bad input is checked before the first frame is decoded, in the order
a user fixes things: config, sources, Redis, model, engine. A camera that cannot be reached at
start fails a single-camera run at once (unless keep_trying); with several sources it is retried
in the background while the others run.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from segstream.engines.protocol import Engine
from segstream.pipeline.config import ConfigError, RunConfig
from segstream.pipeline.sources.locations import default_stream_id
from segstream.pipeline.runtime import Chain, StageStats
from segstream.pipeline.sinks import Sink
from segstream.pipeline.sources.policy import check_source, protocol_whitelist
from segstream.pipeline.sources.file import VideoFileSource
from segstream.pipeline.streams import SourceError
from segstream.pipeline.stream_spec import Source, StreamSpec, make_source
from segstream.pipeline.streaming import StreamingPipeline
from segstream.pipeline.streams import StreamState
from segstream.pipeline.wire.stream_id import stream_id_problem

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did, for the closing summary and for benchmarks."""

    streams: dict[str, StreamState]
    elapsed: float
    model_source: str
    placeholder: bool
    engine: str
    stages: list[StageStats]
    videos: list[Path] = field(default_factory=list)
    source_errors: list[str] = field(default_factory=list)
    corrupt_skipped: int = 0
    interrupted: bool = False

    @property
    def frames(self) -> int:
        return sum(t.published for t in self.streams.values())

    @property
    def instances(self) -> int:
        return sum(t.instances for t in self.streams.values())

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0


def make_sources(locations: list[str], stream_ids: list[str] | None, config: RunConfig,
                 kind: str = "auto") -> list[Source]:
    """One source per location, with ids from --stream-id (in order) or the file stem / URL."""
    for location in locations:  # judged first: a refused source's cause is the line to show, not its id
        check_source(location, config.sources, "trusted")
    if stream_ids and len(stream_ids) != len(locations):
        raise ConfigError(f"--stream-id: got {len(stream_ids)} ids for {len(locations)} sources")
    for stream_id in stream_ids or []:  # the one rule (pipeline/wire/stream_id.py), one line naming it
        if problem := stream_id_problem(stream_id):
            raise ConfigError(f"--stream-id: {problem}")
    ids = stream_ids or [default_stream_id(loc) for loc in locations]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"stream ids must be unique, got {ids} (use --stream-id)")
    try:
        specs = [StreamSpec(id=i, url=loc, kind=kind) for loc, i in zip(locations, ids)]
    except ValueError as exc:
        raise ConfigError(f"bad stream id or source: {str(exc).splitlines()[0]}") from None
    return [make_source(spec, config) for spec in specs]


def check_sources(sources: list[Source], keep_trying: bool) -> None:
    """Open each source once. Bad files fail the run; an unreachable camera fails it only when it
    is the run's only source and keep_trying is off (else it is retried in the background)."""
    for source in sources:
        if not source.live:
            source.check()
            continue
        try:
            source.check()
        except SourceError:
            if len(sources) == 1 and not keep_trying:
                raise


def _video_fps(sources: list[Source], default: float) -> float:
    import av

    for source in sources:
        if isinstance(source, VideoFileSource):
            with av.open(source.path, options={"protocol_whitelist": protocol_whitelist(source.path)}) as container:
                rate = container.streams.video[0].average_rate
                if rate:
                    return float(rate)
        elif getattr(source, "frame_seconds", 0.0):  # an NVDEC source, opened by check_sources
            return 1.0 / source.frame_seconds
    return default


class PipelineRun:
    """A run as an application (segstream.commands.lifecycle.Application): the given sources
    through one StreamingPipeline until the last file ends (cameras: until drained).

    Constructing it checks everything bad input can spoil, in the order a user fixes things
    (config, sources, Redis, model, engine): the sources here, the rest in start(), which
    loads the model. on_start(chain) / on_pipeline(pipeline): called once everything runs (the
    command attaches HTTP with on_pipeline; tests stop a run with them).
    """

    def __init__(
        self,
        locations: list[str],
        config: RunConfig,
        stream_ids: list[str] | None = None,
        engine: Engine | None = None,
        extra_sinks: list[Sink] | None = None,
        on_start: Callable[[Chain], Any] | None = None,
        keep_trying: bool = False,
        kind: str = "auto",
        on_pipeline: Callable[[StreamingPipeline], Any] | None = None,
    ) -> None:
        if not locations:
            raise ConfigError("no source given")
        self.config, self.engine, self.extra_sinks = config, engine, extra_sinks
        self.on_start, self.on_pipeline = on_start, on_pipeline
        self.sources = make_sources(locations, stream_ids, config, kind)
        check_sources(self.sources, keep_trying)
        self.pipeline: StreamingPipeline | None = None
        self.error: BaseException | None = None  # the fatal stage error, raised again by run()
        self._started = self._ended_at = None  # monotonic
        self._aborted = False
        self._closed = False
        self._closing = threading.Lock()

    def start(self) -> None:
        config, sources = self.config, self.sources
        fps = _video_fps(sources, config.output.video_fps) if config.output.video else None
        mode = config.gating.mode  # auto gates cameras only: a run of files is the pipeline as it was
        pipeline = StreamingPipeline(config, self.engine, self.extra_sinks, keep_alive=False, video_fps=fps,
                                     multiple_streams=len(sources) > 1,
                                     gating=mode == "on" or (mode == "auto" and any(s.live for s in sources)))
        self.pipeline = pipeline  # the model is loaded
        self._started = time.monotonic()
        try:
            for source in sources:
                pipeline.add_source(source)
            pipeline.start()
            if self._aborted:  # a second signal came while the model loaded
                pipeline.abort()
                return
            if self.on_start is not None:
                self.on_start(pipeline.chain)
            if self.on_pipeline is not None:
                self.on_pipeline(pipeline)
        except BaseException:
            pipeline.abort()
            self._close()
            raise

    def ended(self) -> bool:
        """Every source ended and everything was published, or the chain is stopping by itself
        (a fatal stage error, or someone called pipeline.stop())."""
        chain = self.pipeline.chain if self.pipeline is not None else None
        return chain is not None and (chain.done() or chain.stopping.is_set())

    def drain(self, timeout: float) -> bool:
        pipeline = self.pipeline
        if pipeline is None:
            return True
        drained = True
        try:
            if pipeline.chain.done():
                pipeline.wait(0)  # raises the stage error that ended it, if one did
            else:
                drained = pipeline.shutdown(timeout)
        except Exception as exc:  # a stage error: what was in flight is drained; the run failed
            self.error = exc
        finally:
            self._close()
        return drained

    def stop(self) -> None:
        """A first signal while the model loads: nothing to cut short; drain() follows start()."""

    def abort(self) -> None:
        self._aborted = True
        if self.pipeline is not None:
            self.pipeline.abort()
            self._close()

    def _close(self) -> None:
        # drain() (on the lifecycle's helper thread) and abort() (on the main thread) may both get here.
        with self._closing:
            if self._closed or self.pipeline is None:
                return
            self._closed = True
            try:
                self.pipeline.close()
            finally:
                self._ended_at = time.monotonic()

    def failure(self) -> str | None:
        if self.error is None:
            return None
        text = str(self.error).strip()
        return text.splitlines()[0] if text else type(self.error).__name__

    def summary(self) -> RunSummary:
        pipeline = self.pipeline
        if pipeline is None:
            return RunSummary(streams={}, elapsed=0.0, model_source=self.config.model.name or "", placeholder=False,
                              engine="", stages=[])
        end = self._ended_at or time.monotonic()
        return summarize(pipeline, end - (self._started or end), self.sources)


def summarize(pipeline: StreamingPipeline, elapsed: float, sources: list[Source] | None = None) -> RunSummary:
    """The RunSummary of everything `pipeline` ran in `elapsed` s (the streams it still lists).

    sources: a run's sources, whose errors are bad input found while running (`source_errors`:
    exit 2) and whose corrupt packets are counted. A long-running service (serve, worker) passes
    none: its streams' errors stay with each stream (StreamState.error, on its summary line).
    """
    return RunSummary(
        streams={s.stream_id: s for s in pipeline.registry.all()},
        elapsed=elapsed,
        engine=pipeline.engine_name,
        stages=pipeline.chain.stats,
        videos=list(pipeline.video.paths) if pipeline.video else [],
        source_errors=[str(exc) for _, exc in pipeline.chain.producer_errors] if sources is not None else [],
        corrupt_skipped=sum(s.counters.corrupt for s in sources or []),
        interrupted=pipeline.chain.stopping.is_set(),
        model_source=pipeline.model_source,
        placeholder=pipeline.placeholder,
    )


def run(locations: list[str], config: RunConfig, **options: Any) -> RunSummary:
    """PipelineRun in this thread until every file ends (cameras: until pipeline.stop()), for
    benchmarks, tests and commands that drive a run themselves; no signal handling (the command
    line's lifecycle is segstream.commands.lifecycle).

    options: PipelineRun's (stream_ids, engine: this engine instead of one built from
    config.model/config.engine, extra_sinks, on_start, keep_trying, kind, on_pipeline).
    Raises ConfigError/SourceError/SinkError/ModelError/EngineError for bad input before starting,
    and the first stage error after draining what was in flight.
    """
    app = PipelineRun(locations, config, **options)
    app.start()
    try:
        while not app.ended():
            time.sleep(0.05)
        app.drain(config.shutdown_timeout)
    except BaseException:  # Ctrl-C in a script: stop now, close the sinks
        app.abort()
        raise
    if app.error is not None:
        raise app.error
    return app.summary()
