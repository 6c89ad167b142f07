"""Inference stages: Batch -> one FrameDetections per frame, through any Engine.

With a split engine (segstream.engines.protocol.SplitEngine) on a CPU the engine runs as two
stages on two threads, one batch apart:

    Batch -> features (engine.extract: the dense trunk) -> BatchFeatures -> inference (engine.detect) -> FrameDetections

so that the trunk of batch n+1 runs on one core while the heads of batch n run on another. Other
engines, or `engine.overlap: false`, run `engine.infer` whole in the inference stage. On a GPU
the inference stage runs the engine on its own CUDA stream, after the preprocess's event, and
sends an event with the detections (pipeline/stages/device_streams.py).

An engine error on one batch does not end the run: those frames go on with `error` set and no
detections (published with an `error` field), until `max_consecutive_errors` in a row.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Iterable

from segstream.engines.protocol import Engine, SplitEngine
from segstream.pipeline.stages.device_streams import device_type, hand_over, on_stream, stage_stream, take_over
from segstream.pipeline.stages.faults import ConsecutiveFailures
from segstream.pipeline.messages import Batch, BatchFeatures, FrameDetections


class EngineFailures(ConsecutiveFailures):
    """The engine's failures in a row, counted across both stages of a split engine (two threads)."""

    def __init__(self, limit: int) -> None:
        super().__init__("engine", limit)
        self._lock = threading.Lock()

    def record(self, exc: BaseException) -> str:
        with self._lock:
            return super().record(exc)

    def succeeded(self) -> None:
        with self._lock:
            super().succeeded()


def _failed(batch: Batch, reason: str) -> list[FrameDetections]:
    return [FrameDetections(frame, None, scale, error=reason) for frame, scale in zip(batch.frames, batch.scales)]


class Features:
    """First stage of a split engine: Batch -> BatchFeatures (engine.extract); markers pass through."""

    name = "features"
    take = 1

    def __init__(self, engine: SplitEngine, failures: EngineFailures) -> None:
        self.engine = engine
        self.failures = failures

    def process(self, items: list[Any]) -> Iterable[Any]:
        out: list[Any] = []
        for item in items:
            if not isinstance(item, Batch):
                out.append(item)
                continue
            try:  # split engines overlap on a CPU only (engine_stages): no streams here
                out.append(BatchFeatures(item, self.engine.extract(item.images, item.image_sizes)))
            except Exception as exc:  # one bad batch is skipped; StageFailed past the limit
                out.extend(_failed(item, self.failures.record(exc)))
        return out

    def flush(self) -> Iterable[Any]:
        return ()


class Inference:
    """Batch -> FrameDetections (engine.infer), or BatchFeatures -> FrameDetections (engine.detect)."""

    name = "inference"
    take = 1

    def __init__(self, engine: Engine, max_consecutive_errors: int = 5, failures: EngineFailures | None = None) -> None:
        self.engine = engine
        self.failures = failures or EngineFailures(max_consecutive_errors)
        self.batches = 0
        self.batched_frames = 0
        self.stream = stage_stream(engine.device)

    def process(self, items: list[Any]) -> Iterable[Any]:
        out: list[Any] = []
        for item in items:
            if not isinstance(item, (Batch, BatchFeatures)):
                out.append(item)
                continue
            batch = item.batch if isinstance(item, BatchFeatures) else item
            self.batches += 1
            self.batched_frames += len(batch.frames)
            try:
                with on_stream(self.stream):
                    if isinstance(item, BatchFeatures):
                        detections = self.engine.detect(item.features)
                    else:
                        take_over(self.stream, [item.ready], [item.images])
                        detections = self.engine.infer(item.images, item.image_sizes)
                    ready = hand_over(self.stream)
            except Exception as exc:  # one bad batch is skipped; StageFailed past the limit
                out.extend(_failed(batch, self.failures.record(exc)))
                continue
            self.failures.succeeded()
            out.extend(FrameDetections(frame=frame, detections=found, scale=scale, ready=ready)
                       for frame, found, scale in zip(batch.frames, detections, batch.scales))
        return out

    def flush(self) -> Iterable[Any]:
        return ()


def engine_stages(engine: Engine, max_consecutive_errors: int, overlap: bool, threads: int | None = None) -> list[Any]:
    """[Features, Inference] for a split engine on a CPU with `overlap`, else [Inference].

    Only on a CPU: there the halves' arithmetic runs on the calling threads, so two threads put
    two cores to work; a GPU engine's work is queued on the device either way. With two halves,
    torch's intra-op threads are set to half the cores each (unless `threads`, engine.threads, is
    set): two full OpenMP teams on the same cores spin against each other (measured on 2 cores:
    docs/engines.md, "Overlap").
    """
    failures = EngineFailures(max_consecutive_errors)
    inference = Inference(engine, max_consecutive_errors, failures)
    if overlap and isinstance(engine, SplitEngine) and device_type(engine.device) == "cpu":
        # Only an engine that computes with torch has torch's thread pool to size (it has imported
        # torch by now); a torch-free engine sizes its own threads.
        torch = sys.modules.get("torch")
        if threads is None and torch is not None:
            torch.set_num_threads(max(1, _usable_cores() // 2))
        return [Features(engine, failures), inference]
    return [inference]


def _usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

