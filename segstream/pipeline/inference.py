"""Inference stage: Batch -> one FrameDetections per frame, through any Engine."""

from __future__ import annotations

from typing import Any, Iterable

from segstream.engines.protocol import Engine
from segstream.pipeline.messages import Batch, FrameDetections


class Inference:
    name = "inference"
    take = 1

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def process(self, items: list[Any]) -> Iterable[Any]:
        for item in items:
            if not isinstance(item, Batch):
                yield item
                continue
            detections = self.engine.infer(item.images, item.image_sizes)
            for frame, found, scale in zip(item.frames, detections, item.scales):
                yield FrameDetections(frame=frame, detections=found, scale=scale)

    def flush(self) -> Iterable[Any]:
        return ()
