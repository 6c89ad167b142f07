"""The pipeline as a long-lived object: one loaded engine, one chain of stages, one set of sinks,
and streams added and removed while it runs (`segstream run` adds its sources at start and ends
with the last file; `segstream serve` adds and removes cameras over HTTP).

    StreamingPipeline(config).start(); .add_stream(StreamSpec(id="cam1", url="rtsp://...")); ...

Each stream has its own lane into the first stage, with the policy its kind needs (files block,
cameras drop their oldest frame, `queues.live_frames` per camera), and its own StreamState in
`registry`. What a stream is and the source made for it: pipeline/stream_spec.py; the stages and
the edges between them: pipeline/stage_chain.py. Nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

from segstream.engines.protocol import Engine
from segstream.pipeline.config import RunConfig
from segstream.pipeline.messages import Frame, FrameResult
from segstream.pipeline.progress import Progress
from segstream.pipeline.queues import EdgePolicy
from segstream.pipeline.runtime import StageStats
from segstream.pipeline.sinks import Sink
from segstream.pipeline.sinks.annotated_video import AnnotatedVideoSink
from segstream.pipeline.sinks.console import ConsoleSink
from segstream.pipeline.sinks.redis_stream import RedisStreamSink
from segstream.pipeline.sources.camera import Supervision
from segstream.pipeline.stage_chain import stage_chain
from segstream.pipeline.stages.gating import Gate, GateSettings, resolve_mode
from segstream.pipeline.stages.preprocess import fit_size
from segstream.pipeline.stages.publish import Publish
from segstream.pipeline.stages.tracking import Tracking
from segstream.pipeline.stream_spec import Source, StreamExists, StreamSpec, UnknownStream, make_source
from segstream.pipeline.streams import StreamRegistry, StreamState

if TYPE_CHECKING:  # imported where used: the model loaders may need torch
    from segstream.engines.factory import OpenedModel

log = logging.getLogger(__name__)

#: Ended streams kept listed (final state and error) until deleted; older ones beyond this go.
ENDED_KEPT = 100


def make_engine(config: RunConfig) -> "tuple[Engine, OpenedModel]":
    """The run's engine: an artifact (bundled or --model DIR) on the torch-free engine, else the torch model's."""
    from segstream.engines.factory import open_model_engine

    m, e = config.model, config.engine
    opened = open_model_engine(m.name, m.weights, m.input_size, m.allow_download, e.kind, e.device, e.batch_size,
                               e.onnx, e.precision, threads=e.threads, score_threshold=m.score_threshold,
                               calibration=e.calibration)
    if e.threads and opened.loaded is not None:  # (the torch-free path never imports torch for this)
        import torch

        torch.set_num_threads(e.threads)
    return opened.engine, opened


class StreamingPipeline:
    """Sources -> preprocess -> [features ->] inference -> postprocess -> [tracking ->] publish, with streams
    added at will (features: a split engine's trunk, see pipeline/stages/inference.py).

    Raises SinkError (Redis unreachable at start), ModelError/EngineError (bad model) here, so a
    service fails before it listens. keep_alive: run without streams until stop() (a service);
    otherwise the chain ends with its last stream (a `segstream run`).
    """

    def __init__(self, config: RunConfig, engine: Engine | None = None, extra_sinks: list[Sink] | None = None,
                 keep_alive: bool = True, video_fps: float | None = None, multiple_streams: bool = True,
                 gating: bool | None = None) -> None:
        from segstream.kernels import host_build

        host_build.check()  # a missing/broken kernel library stops here, before Redis or an engine is touched
        self.config = config
        sinks: list[Sink] = []
        self.redis: RedisStreamSink | None = None
        if config.redis.url:
            r = config.redis
            self.redis = RedisStreamSink(r.url, r.prefix, r.maxlen, r.pubsub, r.retention_seconds, r.outbox,
                                         backoff_initial=r.backoff_initial, backoff_max=r.backoff_max)
            sinks.append(self.redis)
        self._owns_engine = engine is None
        self.model_loads = 0
        self.model_source = "given engine"
        self.placeholder = False
        if engine is None:
            engine, loaded = make_engine(config)
            self.model_loads += 1
            self.model_source, self.placeholder = loaded.source, loaded.placeholder
        self.engine = engine
        self.engine_name = getattr(engine, "name", type(engine).__name__)
        self.video: AnnotatedVideoSink | None = None
        if config.output.video:
            self.video = AnnotatedVideoSink(config.output.video, video_fps or config.output.video_fps,
                                            multiple_streams=multiple_streams)
            sinks.append(self.video)
        if config.output.console:
            sinks.append(ConsoleSink())
        sinks.extend(extra_sinks or [])
        self.sinks = sinks
        self.registry = StreamRegistry()
        self.progress = Progress(self.registry, enabled=config.output.progress,
                                 interval=config.output.status_interval,
                                 redis_down_since=lambda: self.redis_down_since)
        self.publish = Publish(sinks, self.registry, self.progress)
        self.tracking = Tracking(config.tracking) if config.tracking.enabled else None
        # Motion gating (pipeline/stages/gating.py): a gate before preprocess and the carry-over before
        # publish. gating: whether any stream may be gated (None: unless gating.mode is off). A
        # run that gates nothing leaves them out, so it is the chain as it was; a service keeps
        # them, since a stream added later may ask for gating.
        self._gating: dict[str, str | None] = {}
        g = config.gating
        self.gate: Gate | None = None
        if gating if gating is not None else (keep_alive or g.mode != "off"):
            self.gate = Gate(GateSettings(g.max_interval, g.noise_factor, g.min_change, g.min_cells, hold=g.hold),
                             config.engine.batch_size, self._gated, self._count_gated)
        wired = stage_chain(config, engine, self.publish, self.tracking, self.gate, self._gate_dropped,
                            regions=self.video is not None or config.tracking.enabled or keep_alive,
                            keep_alive=keep_alive)
        self.chain, self.inference = wired.chain, wired.inference
        self.chain.on_producer_error = self._source_failed
        self.sources: dict[str, Source] = {}
        self.ended_kept = ENDED_KEPT
        self._unreleased: set[str] = set()  # gone streams whose sink state waits to be freed
        self._lock = threading.Lock()
        self._ticker = threading.Event()
        self.started: float | None = None

    # -- streams -------------------------------------------------------------------------------
    def add_stream(self, spec: StreamSpec) -> StreamState:
        """Start a stream; never waits for a camera (an unreachable one is retried in the background)."""
        source = make_source(spec, self.config)
        if spec.gating is not None and spec.gating != "off" and self.gate is None:
            raise ValueError(f"{spec.id}: gating is {spec.gating}, but this run has gating.mode off")
        return self.add_source(source, gating=spec.gating)

    def _gated(self, stream_id: str, live: bool) -> bool:
        """Whether the stream's frames go through the gate (its spec's gating, else the config's)."""
        return resolve_mode(self._gating.get(stream_id) or self.config.gating.mode, live)  # type: ignore[arg-type]

    def _size_gate_outbox(self) -> None:
        """The gate's outbox holds `queues.live_frames` frames per camera (the frames that wait
        for the engine wait here now, not in the lanes, which the gate keeps drained: so a
        camera's latency bound is as it was) and a batch, at least."""
        if self.gate is None:
            return
        with self._lock:
            cameras = sum(1 for source in self.sources.values() if source.live)
        q = self.config.queues
        outbox = self.chain.queues[1]
        with outbox._cond:
            outbox.maxsize = max(self.config.engine.batch_size, q.live_frames * max(cameras, 1))
            outbox._cond.notify_all()

    def _gate_dropped(self, frame: Frame) -> None:
        """A camera frame past the gate dropped while it waited for the engine (gate's thread)."""
        state = self.registry.get(frame.stream_id)
        if state is not None:
            state.frames_dropped(1, "queue")
        if self.gate is not None:
            self.gate.dropped(frame)

    def _count_gated(self, stream_id: str, inferred: bool) -> None:
        state = self.registry.get(stream_id)
        if state is not None:
            state.frame_gated(inferred)

    def add_source(self, source: Source, gating: str | None = None) -> StreamState:
        """Start feeding `source`; gating: auto|on|off for this stream (None: config's gating.mode)."""
        with self._lock:
            if source.stream_id in self.sources or source.stream_id in self.registry:
                raise StreamExists(source.stream_id)
            self.sources[source.stream_id] = source
            self._gating[source.stream_id] = gating
            source.state.gating = self.gate is not None and self._gated(source.stream_id, source.live)
            self.registry.add(source.state)
        if self.video is None and hasattr(source, "pixels"):
            # Nothing draws on the frames: a CPU decoder scales them straight to the engine's input
            # size (NVDEC frames stay on the device, where preprocess resizes them).
            input_size = self.engine.config.input_size
            source.pixels.fit = lambda h, w: fit_size(h, w, input_size)
        state = source.state
        # A resumed stream's first frame follows the last one published: nothing was dropped.
        self.publish.start_stream(source.stream_id, getattr(source, "start_frame", None) or 0)
        if self.tracking is not None:  # and its new tracks' ids follow the ones published
            self.tracking.start_stream(source.stream_id, getattr(source, "first_track_id", None))
        if source.live:
            policy = EdgePolicy(self.config.queues.live_frames, "drop_oldest",
                                droppable=lambda item: isinstance(item, Frame),
                                on_drop=lambda _frame: state.frames_dropped(1, "queue"))
        else:
            state.expected_frames = getattr(source, "expected_frames", 0)
            policy = EdgePolicy(max(self.config.engine.batch_size, self.config.queues.file_frames), "block")
        self._size_gate_outbox()
        self.chain.add_producer(source, policy)
        return state

    def remove_stream(self, stream_id: str, timeout: float | None = None) -> None:
        """Stop one stream and wait until what it produced is published (a file gets its EOS);
        a stream that ended already is only taken off the list."""
        with self._lock:
            source = self.sources.get(stream_id)
            ended = source is None and stream_id in self.registry
        if ended:
            self.registry.remove(stream_id)
            self._release(stream_id)
            return
        if source is None:
            raise UnknownStream(stream_id)
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        grace = getattr(source, "supervision", Supervision()).stall_timeout if source.live else timeout
        self.chain.remove_producer(stream_id, grace=min(grace, timeout))
        while time.monotonic() < deadline and not self._drained(stream_id):
            time.sleep(0.05)
        with self._lock:
            self.sources.pop(stream_id, None)
            self._gating.pop(stream_id, None)
            self.registry.remove(stream_id)
        self._release(stream_id)

    def _source_failed(self, stream_id: str, exc: BaseException) -> None:
        """A source raised (on its thread): logged once here, and kept as its stream's `error`."""
        reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        log.error("stream %s: %s", stream_id, reason)
        state = self.registry.get(stream_id)
        if state is not None:
            state.fail(reason)

    def _release(self, stream_id: str, source: Source | None = None) -> None:
        """Free what the pipeline keeps for a stream that is over: its source, its error in the
        chain, its frame numbering, its tracker (track ids stay unique), its Redis outbox (once
        empty: retried by the status-lines thread). `source`: the ended one (not one added since)."""
        with self._lock:
            current = self.sources.get(stream_id)
            if current is not None and current is not source:
                return  # a stream by that id was added again meanwhile: its state is in use
            self.sources.pop(stream_id, None)
        self._size_gate_outbox()
        self.chain.forget(stream_id)
        self.publish.forget(stream_id)
        if self.tracking is not None:
            self.tracking.forget(stream_id)
        if self.redis is not None and not self.redis.release(stream_id):
            with self._lock:
                self._unreleased.add(stream_id)

    def _tidy(self) -> None:
        """A service's streams that ended on their own: free their state, keep them listed (the
        newest `ended_kept` of them) with their final counters and error until deleted."""
        running = set(self.chain.producers())
        ended = [s for s in self.registry.ended() if s.stream_id not in running]
        with self._lock:
            done = [(s.stream_id, self.sources[s.stream_id]) for s in ended
                    if s.stream_id in self.sources and self.sources[s.stream_id].state is s]
        for stream_id, source in done:
            self._release(stream_id, source)
        for state in ended[:max(0, len(ended) - self.ended_kept)]:
            if self.registry.get(state.stream_id) is state:  # (not one added again since)
                self.registry.remove(state.stream_id)
                self._release(state.stream_id)
        with self._lock:
            waiting = list(self._unreleased)
        for stream_id in waiting:
            if stream_id in self.registry and stream_id in self.sources:
                continue  # added again meanwhile: its sink state is in use
            if self.redis is None or self.redis.release(stream_id):
                with self._lock:
                    self._unreleased.discard(stream_id)

    def _drained(self, stream_id: str) -> bool:
        if f"lane:{stream_id}" in self.chain.depths():
            return False
        state = self.registry.get(stream_id)
        if state is None:
            return True
        # A stream's last entry (a file's EOS, a camera's final status) follows its frames through
        # every stage; once it is published, so is everything before it.
        return state.finished is not None

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.started = time.monotonic()
        self.chain.start()
        threading.Thread(target=self._tick, name="status-lines", daemon=True).start()

    def _tick(self) -> None:
        # Status lines keep coming when no frame does (every camera dark, Redis away).
        while not self._ticker.wait(1.0):
            self.progress.tick()
            if self.chain.keep_alive:
                try:
                    self._tidy()
                except Exception:  # freeing must never stop the status lines
                    log.exception("freeing ended streams failed")

    def stop(self) -> None:
        """Ask every stream to finish; what is in flight is still published."""
        self.chain.stop()

    def shutdown(self, timeout: float | None = None) -> bool:
        """stop(), then drain for at most `timeout` s (default `shutdown_timeout`); past it, abort.
        Returns True when everything in flight was published."""
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.stop()
        # A camera stuck in a network read cannot be interrupted: stop waiting for it.
        while self.chain.producers() and time.monotonic() < deadline - timeout / 2:
            time.sleep(0.05)
        self.chain.abandon_producers()
        self.publish.close_timeout = max(0.1, deadline - time.monotonic() - 0.5)
        done = self.chain.wait(max(0.1, deadline - time.monotonic()))
        if not done:
            self.abort()
        return done

    def abort(self) -> None:
        """Stop now: stages discard what they hold, Redis is no longer waited for."""
        if self.redis is not None:
            self.redis.abort()
        if self.video is not None:
            self.video.abort()
        self.chain.abort()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the chain to end (raises the first stage error); False on timeout."""
        return self.chain.wait(timeout)

    def close(self) -> None:
        """Close the sinks (idempotent; the publish stage normally did it at the end)."""
        self._ticker.set()
        self.publish.close(self.publish.close_timeout)
        if self._owns_engine and hasattr(self.engine, "close"):  # a given engine is its owner's to close
            self.engine.close()

    # -- read by the service -------------------------------------------------------------------
    @property
    def redis_up(self) -> bool:
        return self.redis is None or self.redis.up

    @property
    def redis_down_since(self) -> float | None:
        return None if self.redis is None else self.redis.down_since

    def ready(self) -> bool:
        return self.started is not None and self.redis_up and not self.chain.done()

    def stage_stats(self) -> list[StageStats]:
        return self.chain.stats

    def queue_depths(self) -> dict[str, int]:
        return self.chain.depths()

    def batch_sizes(self) -> tuple[int, int]:
        return self.inference.batches, self.inference.batched_frames

    def watch(self, callback: Callable[[FrameResult], None]) -> Callable[[], None]:
        return self.publish.watch(callback)

