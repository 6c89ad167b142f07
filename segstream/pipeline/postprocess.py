"""Postprocess stage: FrameDetections -> FrameResult with full-resolution masks as COCO RLE.

Masks are pasted the way torchvision's `paste_masks_in_image` does (the 28x28 probabilities,
padded by one cell, resized bilinearly onto the integer box grown by the same margin), but only
the box region is computed and thresholded: the frame-sized mask is never materialised, and the
RLE is computed from the region (see rle.py).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from segstream.engines.protocol import Detections
from segstream.pipeline.faults import ConsecutiveFailures
from segstream.pipeline.messages import FrameDetections, FrameResult, Instance
from segstream.pipeline.rle import encode_region


def frame_boxes(boxes: torch.Tensor, scale: tuple[float, float], height: int, width: int) -> torch.Tensor:
    """float32 [K, 4] network-input boxes -> frame pixels, clipped to the frame."""
    sy, sx = scale
    out = boxes / boxes.new_tensor([sx, sy, sx, sy])
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


def paste_regions(
    masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold: float
) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Threshold each mask pasted into its box, computing only the box region.

    masks: float32 [K, M, M] probabilities; boxes: float32 [K, 4] in frame pixels.
    Returns K pairs (region bool [y1 - y0, x1 - x0], (x0, y0, x1, y1)) in frame pixels, end exclusive.
    """
    if masks.shape[0] == 0:
        return []
    m = masks.shape[-1]
    padded = F.pad(masks, (1, 1, 1, 1))
    grow = (m + 2) / m
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * grow
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * grow
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    grown = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1).to(torch.int64).tolist()
    out = []
    for i, (bx0, by0, bx1, by1) in enumerate(grown):
        w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
        x0, x1 = max(bx0, 0), min(bx1 + 1, width)
        y0, y1 = max(by0, 0), min(by1 + 1, height)
        if x1 <= x0 or y1 <= y0:
            out.append((np.zeros((0, 0), dtype=bool), (0, 0, 0, 0)))
            continue
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        region = resized[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0] > threshold
        out.append((region.cpu().numpy(), (x0, y0, x1, y1)))
    return out


class Postprocess:
    name = "postprocess"
    take = 1

    def __init__(self, class_names: tuple[str, ...], mask_threshold: float, max_consecutive_errors: int = 5) -> None:
        self.class_names = class_names
        self.mask_threshold = mask_threshold
        self.failures = ConsecutiveFailures("postprocess", max_consecutive_errors)

    def process(self, items: list[Any]) -> Iterable[Any]:
        return [self.result(item) if isinstance(item, FrameDetections) else item for item in items]

    def flush(self) -> Iterable[Any]:
        return ()

    def result(self, item: FrameDetections) -> FrameResult:
        frame, found = item.frame, item.detections
        if found is None:  # the engine failed on this frame's batch
            return FrameResult(frame=frame, latency=time.time() - frame.time, error=item.error)
        try:
            instances = self.instances(found, item.scale, frame.height, frame.width)
        except Exception as exc:  # one bad frame is published without instances
            return FrameResult(frame=frame, latency=time.time() - frame.time, error=self.failures.record(exc))
        self.failures.succeeded()
        return FrameResult(frame=frame, instances=instances, latency=time.time() - frame.time)

    def instances(self, found: Detections, scale: tuple[float, float], height: int, width: int) -> list[Instance]:
        """Instances in frame pixels, in the engine's (descending score) order."""
        if len(found) == 0:
            return []
        boxes = frame_boxes(found.boxes.float(), scale, height, width)
        regions = paste_regions(found.masks.float(), boxes, height, width, self.mask_threshold)
        out = []
        for box, score, class_id, (region, (x0, y0, x1, y1)) in zip(
            boxes.tolist(), found.scores.tolist(), found.classes.tolist(), regions
        ):
            label = self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)
            out.append(
                Instance(
                    class_id=int(class_id),
                    label=label,
                    score=float(score),
                    box=tuple(box),
                    rle=encode_region(region, x0, y0, height, width),
                    region=region,
                    region_box=(x0, y0, x1, y1),
                )
            )
        return out
