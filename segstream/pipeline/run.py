"""A segstream run: the given sources through a StreamingPipeline until the last file ends
(cameras: until stopped), with Ctrl-C / SIGTERM handled as a drain.

Everything that can fail on bad input is checked before the first frame is decoded, in the order
a user fixes things: config, sources, Redis, model, engine. A camera that cannot be reached at
start fails a single-camera run at once (unless keep_trying); with several sources it is retried
in the background while the others run.
"""

from __future__ import annotations

import logging
import signal
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
from segstream.pipeline.streaming import StreamingPipeline, make_engine  # noqa: F401
from segstream.pipeline.streams import StreamState

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


def run(
    locations: list[str],
    config: RunConfig,
    stream_ids: list[str] | None = None,
    engine: Engine | None = None,
    extra_sinks: list[Sink] | None = None,
    handle_signals: bool = True,
    on_start: Callable[[Chain], Any] | None = None,
    keep_trying: bool = False,
    kind: str = "auto",
    on_pipeline: Callable[[StreamingPipeline], Any] | None = None,
) -> RunSummary:
    """Run the pipeline until every file ends (cameras: until stopped) and return a summary.

    engine: use this engine instead of building one from config.model/config.engine (benchmarks, tests).
    on_start(chain) / on_pipeline(pipeline): called once everything runs (tests stop a run with them).
    Raises ConfigError/SourceError/SinkError/ModelError/EngineError for bad input before starting,
    and the first stage error after draining what was in flight.
    """
    if not locations:
        raise ConfigError("no source given")
    sources = make_sources(locations, stream_ids, config, kind)
    check_sources(sources, keep_trying)
    fps = _video_fps(sources, config.output.video_fps) if config.output.video else None
    mode = config.gating.mode  # auto gates cameras only: a run of files is the pipeline as it was
    pipeline = StreamingPipeline(config, engine, extra_sinks, keep_alive=False, video_fps=fps,
                                 multiple_streams=len(sources) > 1,
                                 gating=mode == "on" or (mode == "auto" and any(s.live for s in sources)))
    stop = threading.Event()
    restore = _install_signal_handlers(pipeline, stop) if handle_signals else None
    started = time.monotonic()
    try:
        for source in sources:
            pipeline.add_source(source)
        pipeline.start()
        if on_start is not None:
            on_start(pipeline.chain)
        if on_pipeline is not None:
            on_pipeline(pipeline)
        while not pipeline.wait(timeout=0.2):
            if stop.is_set() or pipeline.chain.stopping.is_set():
                pipeline.shutdown(config.shutdown_timeout)
                break
    finally:
        pipeline.close()
        if restore:
            restore()
    elapsed = time.monotonic() - started
    return RunSummary(
        streams={s.stream_id: s for s in pipeline.registry.all()},
        elapsed=elapsed,
        engine=pipeline.engine_name,
        stages=pipeline.chain.stats,
        videos=list(pipeline.video.paths) if pipeline.video else [],
        source_errors=[str(exc) for _, exc in pipeline.chain.producer_errors],
        corrupt_skipped=sum(s.counters.corrupt for s in sources),
        interrupted=pipeline.chain.stopping.is_set(),
        model_source=pipeline.model_source,
        placeholder=pipeline.placeholder,
    )


def _install_signal_handlers(pipeline: StreamingPipeline, stop: threading.Event) -> Callable[[], None] | None:
    """SIGINT/SIGTERM: stop reading and drain; a second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            pipeline.abort()
            raise KeyboardInterrupt
        stop.set()
        pipeline.stop()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
