"""The CPU kernels over numpy arrays: batched NMS and multi-level RoIAlign without torch.

The same C library and the same arithmetic as :mod:`segstream.kernels.nms` and
:mod:`segstream.kernels.roi_align` (torchvision's ``batched_nms`` and ``MultiScaleRoIAlign``
semantics, docs/kernels.md), called through ``host_build.library()`` with numpy buffers. The
torch-free OpenVINO runtime (segstream/engines/openvino_runtime.py) runs on these; nothing here
imports torch.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from segstream.kernels import host_build

MAX_LEVELS = 5


class HostNMSResult(NamedTuple):
    """Fixed-size NMS output for B images and K slots (numpy twin of nms.NMSResult).

    count: int32 [B] kept boxes per image; indices: int64 [B, K] input rows in keep order, -1 unused;
    boxes: float32 [B, K, 4]; scores: float32 [B, K]; classes: int64 [B, K]; zeros in unused slots.
    """

    count: np.ndarray
    indices: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def _pointer(array: np.ndarray | None) -> int | None:
    return None if array is None else array.ctypes.data


def iou_threshold_as_float(threshold: float) -> float:
    """The float32 ``t`` for which ``iou > t`` (float) equals torchvision's CPU comparison of the float
    IoU with the double threshold: the largest float not above the threshold."""
    nearest = np.float32(threshold)
    if float(nearest) <= threshold:
        return float(nearest)
    return float(np.nextafter(nearest, np.float32(-np.inf)))


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_threshold: float,
    score_threshold: float,
    max_outputs: int,
    counts: np.ndarray | None = None,
    threads: int = 1,
) -> HostNMSResult:
    """Per-image, per-class NMS with fixed-size outputs (see segstream.kernels.nms.batched_nms).

    boxes float32 [B, N, 4] (x1, y1, x2, y2, any one frame), scores float32 [B, N], classes int [B, N];
    candidates are rows r < counts[b] with scores > score_threshold (compared in float32); a box is
    suppressed by a kept higher-ranked box of its class with IoU > iou_threshold; equal scores rank the
    lower row first. The first `max_outputs` kept boxes per image.
    """
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be [B, N, 4], got {boxes.shape}")
    images, n = boxes.shape[:2]
    if scores.shape != (images, n) or classes.shape != (images, n):
        raise ValueError(f"scores and classes must be [B={images}, N={n}], got {scores.shape}, {classes.shape}")
    if max_outputs < 0:
        raise ValueError(f"max_outputs must be >= 0, got {max_outputs}")
    if math.isnan(iou_threshold):
        raise ValueError("iou_threshold is NaN")
    k = max_outputs
    count = np.zeros((images,), np.int32)
    indices = np.full((images, k), -1, np.int64)
    out_boxes = np.zeros((images, k, 4), np.float32)
    out_scores = np.zeros((images, k), np.float32)
    out_classes = np.zeros((images, k), np.int64)
    if images == 0 or n == 0 or k == 0:
        return HostNMSResult(count, indices, out_boxes, out_scores, out_classes)
    boxes32 = np.ascontiguousarray(boxes, np.float32)
    scores32 = np.ascontiguousarray(scores, np.float32)
    classes32 = np.ascontiguousarray(classes, np.int32)
    counts32 = None if counts is None else np.ascontiguousarray(counts, np.int32)
    host_build.library().segstream_batched_nms(
        _pointer(boxes32), _pointer(scores32), _pointer(classes32), _pointer(counts32),
        images, n, float(np.float32(score_threshold)), iou_threshold_as_float(float(iou_threshold)), k,
        _pointer(count), _pointer(indices), _pointer(out_boxes), _pointer(out_scores), _pointer(out_classes),
        threads,
    )
    return HostNMSResult(count, indices, out_boxes, out_scores, out_classes)


def level_range(spatial_scales: Sequence[float]) -> tuple[int, int]:
    """torchvision's _setup_scales: -log2 of the first and last scales, in float32, truncated."""
    k_min = int(-np.log2(np.float32(spatial_scales[0])))
    k_max = int(-np.log2(np.float32(spatial_scales[-1])))
    return k_min, k_max


def multilevel_roi_align_nhwc(
    features: Sequence[np.ndarray],
    boxes: np.ndarray,
    output_size: int,
    spatial_scales: Sequence[float],
    sampling_ratio: int = 2,
    aligned: bool = False,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    counts: np.ndarray | None = None,
    threads: int = 1,
) -> np.ndarray:
    """RoIAlign of every box from the FPN level chosen for it (see segstream.kernels.roi_align).

    features: L float32 maps [B, H_l, W_l, C] (channels-last, C-contiguous), the OpenVINO trunk's outputs.
    boxes: float32 [B, R, 4] x1, y1, x2, y2 in input-image pixels; counts: optional int [B], rows past
    counts[b] are padding (zero output).
    Returns float32 [B, R, C, output_size, output_size].
    """
    maps = [np.ascontiguousarray(f, np.float32) for f in features]
    levels = len(maps)
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"need 1..{MAX_LEVELS} feature maps, got {levels}")
    if len(spatial_scales) != levels:
        raise ValueError(f"{levels} feature maps but {len(spatial_scales)} spatial scales")
    images, channels = maps[0].shape[0], maps[0].shape[3]
    for m in maps:
        if m.ndim != 4 or m.shape[0] != images or m.shape[3] != channels:
            raise ValueError(f"feature map {m.shape} does not match [B={images}, H, W, C={channels}]")
    if boxes.ndim != 3 or boxes.shape[0] != images or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be [B={images}, R, 4], got {boxes.shape}")
    rois = boxes.shape[1]
    out = np.empty((images, rois, channels, output_size, output_size), np.float32)
    if out.size == 0:
        return out
    boxes32 = np.ascontiguousarray(boxes, np.float32)
    counts32 = None if counts is None else np.ascontiguousarray(counts, np.int32)
    padded = maps + [maps[0]] * (MAX_LEVELS - levels)  # unused slots: any valid pointer
    heights = [int(m.shape[1]) for m in padded]
    widths = [int(m.shape[2]) for m in padded]
    scales = [float(s) for s in spatial_scales] + [1.0] * (MAX_LEVELS - levels)
    k_min, k_max = level_range(spatial_scales)
    host_build.library().segstream_multilevel_roi_align_nhwc_f32(
        *[_pointer(m) for m in padded], _pointer(boxes32), _pointer(counts32),
        images, rois, channels, levels,
        (ctypes.c_int * MAX_LEVELS)(*heights), (ctypes.c_int * MAX_LEVELS)(*widths),
        (ctypes.c_float * MAX_LEVELS)(*scales),
        k_min, k_max, float(canonical_scale), float(canonical_level),
        output_size, sampling_ratio, int(aligned), _pointer(out), threads,
    )
    return out
