"""Inference stage: Batch -> one FrameDetections per frame, through any Engine.

An engine error on one batch does not end the run: those frames go on with `error` set and no
detections (published with an `error` field), until `max_consecutive_errors` in a row.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from segstream.engines.protocol import Engine
from segstream.pipeline.faults import ConsecutiveFailures
from segstream.pipeline.messages import Batch, FrameDetections


class Inference:
    name = "inference"
    take = 1

    def __init__(self, engine: Engine, max_consecutive_errors: int = 5) -> None:
        self.engine = engine
        self.failures = ConsecutiveFailures("engine", max_consecutive_errors)
        self.batches = 0
        self.batched_frames = 0

    def process(self, items: list[Any]) -> Iterable[Any]:
        out: list[Any] = []
        for item in items:
            if not isinstance(item, Batch):
                out.append(item)
                continue
            self.batches += 1
            self.batched_frames += len(item.frames)
            try:
                if item.ready is not None:  # the batch was made on the preprocess stream
                    torch.cuda.current_stream(item.images.device).wait_event(item.ready)
                detections = self.engine.infer(item.images, item.image_sizes)
            except Exception as exc:  # one bad batch is skipped; StageFailed past the limit
                reason = self.failures.record(exc)
                out.extend(FrameDetections(frame, None, scale, error=reason)
                           for frame, scale in zip(item.frames, item.scales))
                continue
            self.failures.succeeded()
            out.extend(FrameDetections(frame=frame, detections=found, scale=scale)
                       for frame, found, scale in zip(item.frames, detections, item.scales))
        return out

    def flush(self) -> Iterable[Any]:
        return ()
