"""Prometheus metrics, read from the pipeline at scrape time.

A custom prometheus_client Collector: nothing is counted twice. The pipeline's StreamState
counters, stage stats, queue depths and batch counters are the single source of truth; each
scrape turns a snapshot of them into metric families. A removed stream's series disappear with it
(Prometheus treats that like a target restart of those series). In a fleet process (`serve`,
`worker --http`) every per-stream series also carries `worker` (the process's name, as `segstream
status` shows it), so the series of a camera that moved between workers stay apart.

    segstream_frames_decoded_total{stream}            counter   frames decoded by the source
    segstream_frames_published_total{stream}          counter   frames whose entry reached every sink
    segstream_frames_dropped_total{stream,reason}     counter   reason: queue | outbox
    segstream_frames_failed_total{stream}             counter   frames published with an `error` field
    segstream_instances_total{stream}                 counter   instances published
    segstream_reconnects_total{stream}                counter
    segstream_frames_inferred_total{stream}           counter   frames the model ran on (motion gating)
    segstream_frames_gated_total{stream}              counter   frames gating skipped (last instances carried)
    segstream_stream_up{stream}                       gauge     1 while the stream is `live`
    segstream_stream_state{stream,state}              gauge     1 for the stream's current state
    segstream_stream_fps{stream,direction}            gauge     in | out, over the last 10 s
    segstream_capture_to_publish_seconds{stream}      histogram capture (decode) -> published
    segstream_stage_busy_seconds_total{stage}         counter   seconds a stage's worker spent working
    segstream_stage_calls_total{stage}                counter
    segstream_stage_items_total{stage}                counter   items taken in
    segstream_queue_depth{queue}                      gauge     items waiting on each edge
    segstream_engine_batches_total                    counter   engine calls
    segstream_engine_batch_frames_total               counter   frames in them (ratio: mean batch size)
    segstream_engine_batch_size_max                   gauge     engine.batch_size
    segstream_redis_up                                gauge     1 when Redis answers
    segstream_redis_down_since_seconds                gauge     unix time Redis went away (absent when up)
    segstream_model_info{model,engine,device,input_size} info
    segstream_model_loads_total                       counter   model loads since start (1 in a healthy service)
    segstream_viewer_watchers                         gauge     browsers watching a stream
    segstream_viewer_frames_total                     counter   frames drawn for the viewer
    segstream_viewer_busy_seconds_total               counter   seconds drawing + encoding for the viewer
    plus prometheus_client's process_* metrics (CPU seconds, RSS, open fds).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from segstream.service.viewer import Viewer

STATES = ("connecting", "live", "reconnecting", "down", "ended")


class PipelineCollector(Collector):
    """Collects the families listed in the module doc from a StreamingPipeline."""

    def __init__(self, pipeline: Any, viewer: Viewer | None = None, info: dict[str, str] | None = None,
                 worker: str | None = None, redis: Callable[[], tuple[bool, float | None]] | None = None) -> None:
        self.pipeline = pipeline
        self.viewer = viewer
        self.info = info or {}
        self.worker = worker  # a fleet process's name: a `worker` label on every per-stream series
        # (Redis up?, since when not): a fleet process knows it from its loops too, before the sink does
        self.redis = redis or (lambda: (bool(pipeline.redis_up), pipeline.redis_down_since))

    def collect(self) -> Iterator[Metric]:
        yield from self._streams()
        yield from self._runtime()
        yield from self._service()

    def _streams(self) -> Iterator[Metric]:
        per_stream = ["stream", "worker"] if self.worker else ["stream"]
        decoded = CounterMetricFamily("segstream_frames_decoded", "Frames decoded by the stream's source.", labels=per_stream)
        published = CounterMetricFamily("segstream_frames_published", "Frames whose entry reached every sink.", labels=per_stream)
        dropped = CounterMetricFamily("segstream_frames_dropped", "Frames dropped, by reason (queue: a camera outpaced the engine; outbox: Redis was away too long).", labels=per_stream + ["reason"])
        failed = CounterMetricFamily("segstream_frames_failed", "Frames published with an error field (engine or postprocess failure).", labels=per_stream)
        instances = CounterMetricFamily("segstream_instances", "Instances published.", labels=per_stream)
        reconnects = CounterMetricFamily("segstream_reconnects", "Times the stream's source reconnected.", labels=per_stream)
        up = GaugeMetricFamily("segstream_stream_up", "1 while the stream is live (frames flowing), else 0.", labels=per_stream)
        state = GaugeMetricFamily("segstream_stream_state", "1 for the stream's current state.", labels=per_stream + ["state"])
        fps = GaugeMetricFamily("segstream_stream_fps", "Frames per second over the last 10 s (in: decoded, out: published).", labels=per_stream + ["direction"])
        inferred = CounterMetricFamily("segstream_frames_inferred", "Frames the model ran on (all of them without motion gating).", labels=per_stream)
        gated = CounterMetricFamily("segstream_frames_gated", "Frames motion gating skipped: published with the last inferred frame's instances.", labels=per_stream)
        latency = HistogramMetricFamily("segstream_capture_to_publish_seconds", "Seconds from capture (decode) to the published entry.", labels=per_stream)
        for stream in self.pipeline.registry.all():
            snap = stream.snapshot()
            sid = snap["id"]
            key = [sid, self.worker] if self.worker else [sid]
            decoded.add_metric(key, snap["frames_decoded"])
            published.add_metric(key, snap["frames_published"])
            for reason, count in sorted(snap["dropped"].items()):
                dropped.add_metric(key + [reason], count)
            failed.add_metric(key, snap["errors"])
            instances.add_metric(key, snap["instances"])
            reconnects.add_metric(key, snap["reconnects"])
            inferred.add_metric(key, snap["frames_inferred"])
            gated.add_metric(key, snap["frames_gated"])
            up.add_metric(key, 1.0 if snap["state"] == "live" else 0.0)
            for name in STATES:
                state.add_metric(key + [name], 1.0 if snap["state"] == name else 0.0)
            fps.add_metric(key + ["in"], snap["fps_in"])
            fps.add_metric(key + ["out"], snap["fps_out"])
            buckets, total, _count = stream.latency_histogram()
            latency.add_metric(key, [(_le(bound), n) for bound, n in buckets], total)
        yield from (decoded, published, dropped, failed, instances, reconnects, inferred, gated, up, state, fps, latency)

    def _runtime(self) -> Iterator[Metric]:
        busy = CounterMetricFamily("segstream_stage_busy_seconds", "Seconds each stage's worker spent working.", labels=["stage"])
        calls = CounterMetricFamily("segstream_stage_calls", "Calls of each stage.", labels=["stage"])
        items = CounterMetricFamily("segstream_stage_items", "Items each stage took in.", labels=["stage"])
        for stats in self.pipeline.stage_stats():
            busy.add_metric([stats.name], stats.busy)
            calls.add_metric([stats.name], stats.calls)
            items.add_metric([stats.name], stats.items_in)
        depth = GaugeMetricFamily("segstream_queue_depth", "Items waiting on each queue.", labels=["queue"])
        for name, n in sorted(self.pipeline.queue_depths().items()):
            depth.add_metric([name], n)
        batches, frames = self.pipeline.batch_sizes()
        yield from (busy, calls, items, depth)
        yield CounterMetricFamily("segstream_engine_batches", "Engine calls (batches).", value=batches)
        yield CounterMetricFamily("segstream_engine_batch_frames", "Frames in the engine's batches (divide by batches for the mean batch size).", value=frames)
        yield GaugeMetricFamily("segstream_engine_batch_size_max", "Largest batch the engine takes (engine.batch_size).",
                                value=self.info.get("batch_size_max", 1))

    def _service(self) -> Iterator[Metric]:
        redis_up, since = self.redis()
        yield GaugeMetricFamily("segstream_redis_up", "1 when Redis answers, else 0.", value=1.0 if redis_up else 0.0)
        if since is not None:
            yield GaugeMetricFamily("segstream_redis_down_since_seconds", "Unix time since Redis has been unreachable.", value=since)
        info = InfoMetricFamily("segstream_model", "The model and engine every stream shares.")
        info.add_metric([], {k: str(v) for k, v in self.info.items() if k != "batch_size_max"})
        yield info
        yield CounterMetricFamily("segstream_model_loads", "Model loads since the service started (1: streams never reload it).",
                                  value=self.pipeline.model_loads)
        if self.viewer is not None:
            s = self.viewer.stats
            yield GaugeMetricFamily("segstream_viewer_watchers", "Browsers watching a stream in the live viewer.", value=self.viewer.watchers)
            yield CounterMetricFamily("segstream_viewer_frames", "Frames drawn and encoded for the viewer.", value=s.rendered)
            yield CounterMetricFamily("segstream_viewer_busy_seconds", "Seconds spent drawing and encoding viewer frames (plus its hook on the publish thread).",
                                      value=s.busy + s.hook)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def build_registry(collector: PipelineCollector) -> CollectorRegistry:
    """A registry of our own (not prometheus_client's global one), so several services in one
    process (tests) never collide; with the process metrics of this process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry
