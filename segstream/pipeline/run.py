"""A segstream run: sources -> preprocess -> inference -> postprocess -> publish, wired and run.

Everything that can fail on bad input is checked before the first frame is decoded, in the order
a user fixes things: config, sources, Redis, model, engine.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from segstream.engines.factory import open_engine
from segstream.engines.models import LoadedModel, load_model
from segstream.engines.protocol import Engine
from segstream.pipeline.config import ConfigError, RunConfig
from segstream.pipeline.inference import Inference
from segstream.pipeline.messages import Frame
from segstream.pipeline.postprocess import Postprocess
from segstream.pipeline.preprocess import Preprocess, fit_size
from segstream.pipeline.progress import Progress, StreamTally
from segstream.pipeline.publish import Publish
from segstream.pipeline.runtime import Chain, StageStats
from segstream.pipeline.sinks import Sink
from segstream.pipeline.sinks.annotated_video import AnnotatedVideoSink
from segstream.pipeline.sinks.console import ConsoleSink
from segstream.pipeline.sinks.redis_stream import RedisStreamSink
from segstream.pipeline.sources import CameraSource, VideoFileSource, default_stream_id, is_live


@dataclass
class RunSummary:
    """What a run did, for the closing summary and for benchmarks."""

    streams: dict[str, StreamTally]
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


Source = VideoFileSource | CameraSource


def make_sources(locations: list[str], stream_ids: list[str] | None, config: RunConfig) -> list[Source]:
    """One source per location, with ids from --stream-id (in order) or the file stem / URL."""
    if stream_ids and len(stream_ids) != len(locations):
        raise ConfigError(f"--stream-id: got {len(stream_ids)} ids for {len(locations)} sources")
    ids = stream_ids or [default_stream_id(loc) for loc in locations]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"stream ids must be unique, got {ids} (use --stream-id)")
    src = config.source
    threads = src.decoder_threads
    if threads is None:  # a CPU engine owns the cores; decoder threads would only contend with it
        threads = 1 if config.engine.device == "cpu" else 0
    sources: list[Source] = []
    for location, stream_id in zip(locations, ids):
        if is_live(location):
            sources.append(CameraSource(location, stream_id, src.open_timeout, src.read_timeout,
                                        src.reconnect_window, src.max_frames, threads))
        else:
            sources.append(VideoFileSource(location, stream_id, src.max_frames, threads))
    return sources


def make_engine(config: RunConfig) -> tuple[Engine, LoadedModel]:
    m, e = config.model, config.engine
    loaded = load_model(m.name, m.weights, m.input_size, m.allow_download)
    if m.score_threshold is not None:
        loaded.config = loaded.config.replace(score_threshold=m.score_threshold)
        loaded.network.roi_heads.score_thresh = m.score_threshold
    if e.threads:
        torch.set_num_threads(e.threads)
    engine = open_engine(e.kind, loaded, e.device, e.batch_size, e.onnx, e.precision, threads=e.threads)
    return engine, loaded


def _video_fps(sources: list[Source], default: float) -> float:
    import av

    for source in sources:
        if isinstance(source, VideoFileSource):
            with av.open(source.path) as container:
                rate = container.streams.video[0].average_rate
                if rate:
                    return float(rate)
    return default


def run(
    locations: list[str],
    config: RunConfig,
    stream_ids: list[str] | None = None,
    engine: Engine | None = None,
    extra_sinks: list[Sink] | None = None,
    handle_signals: bool = True,
    on_start: Callable[[Chain], Any] | None = None,
) -> RunSummary:
    """Run the pipeline until every file ends (cameras: until stopped) and return a summary.

    engine: use this engine instead of building one from config.model/config.engine (benchmarks, tests).
    Raises ConfigError/SourceError/SinkError/ModelError/EngineError for bad input before starting,
    and the first stage error after draining what was in flight.
    """
    if not locations:
        raise ConfigError("no source given")
    sources = make_sources(locations, stream_ids, config)
    for source in sources:
        source.check()
    sinks: list[Sink] = []
    if config.redis.url:
        r = config.redis
        sinks.append(RedisStreamSink(r.url, r.prefix, r.maxlen, r.pubsub))
    loaded: LoadedModel | None = None
    if engine is None:
        engine, loaded = make_engine(config)
    if config.output.video:
        fps = _video_fps(sources, config.output.video_fps)
        sinks.append(AnnotatedVideoSink(config.output.video, fps, multiple_streams=len(sources) > 1))
    else:  # nothing draws on the frames: decode straight to the engine's input size
        input_size = engine.config.input_size
        for source in sources:
            source.pixels.fit = lambda h, w: fit_size(h, w, input_size)
    if config.output.console:
        sinks.append(ConsoleSink())
    sinks.extend(extra_sinks or [])

    tallies = {
        s.stream_id: StreamTally(s.stream_id, live=s.live, expected=getattr(s, "expected_frames", 0))
        for s in sources
    }
    progress = Progress(tallies, enabled=config.output.progress, interval=config.output.status_interval)
    publish = Publish(sinks, progress)
    batch = config.engine.batch_size
    any_live = any(s.live for s in sources)
    first_queue = max(batch, config.queues.live_frames * len(sources)) if any_live else max(batch, config.queues.file_frames)
    chain = Chain(
        producers=sources,
        stages=[
            Preprocess(engine.config, engine.device, batch),
            Inference(engine),
            Postprocess(engine.config.class_names, engine.config.mask_threshold),
            publish,
        ],
        queue_sizes=[first_queue, config.queues.batches, config.queues.results, config.queues.results],
        droppable=lambda item: isinstance(item, Frame) and item.live,
    )
    if on_start is not None:
        on_start(chain)
    restore = _install_signal_handlers(chain) if handle_signals else None
    started = time.monotonic()
    try:
        chain.run()
    finally:
        publish.close()
        if restore:
            restore()
    elapsed = time.monotonic() - started
    videos = next((s.paths for s in sinks if isinstance(s, AnnotatedVideoSink)), [])
    return RunSummary(
        streams=tallies,
        elapsed=elapsed,
        model_source=loaded.source if loaded else "given engine",
        placeholder=loaded.placeholder if loaded else False,
        engine=getattr(engine, "name", type(engine).__name__),
        stages=chain.stats,
        videos=list(videos),
        source_errors=[str(exc) for _, exc in chain.producer_errors],
        corrupt_skipped=sum(s.counters.corrupt for s in sources),
        interrupted=chain.stopping.is_set(),
    )


def _install_signal_handlers(chain: Chain) -> Callable[[], None] | None:
    """SIGINT/SIGTERM: stop reading and drain; a second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        if chain.stopping.is_set():
            raise KeyboardInterrupt
        chain.stop()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
