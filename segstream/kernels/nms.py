"""Batched (class-aware) NMS with fixed-size outputs and torchvision's keep set and order."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from segstream.kernels import device_build, host_build

# The CUDA path keeps an [N, ceil(N/64)] bit matrix per image (2 MB at N = 4000).
MAX_CUDA_CANDIDATES = 32768
_RANK_THREADS = 256
_MASK_THREADS = 64
_SELECT_THREADS = 256


class NMSResult(NamedTuple):
    """Fixed-size NMS output for B images and K = max_outputs slots.

    count: int32 ``[B]``, kept boxes per image (<= K).
    indices: int64 ``[B, K]``, input rows of the kept boxes in keep order (score descending,
        ties by lower row first), -1 in unused slots.
    boxes: ``[B, K, 4]`` (input boxes' dtype), the kept boxes; zeros in unused slots.
    scores: ``[B, K]`` (input scores' dtype); zeros in unused slots.
    classes: int64 ``[B, K]``; zeros in unused slots.
    """

    count: torch.Tensor
    indices: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor


def _iou_threshold_as_float(threshold: float, device: torch.device) -> float:
    """The float32 ``t`` for which the kernel's ``iou > t`` equals the reference's comparison.

    torchvision's CPU nms compares the float IoU with the double threshold: that equals a
    float comparison against the largest float not above the threshold. Its CUDA nms passes
    the threshold as a float parameter (round to nearest) and compares floats.
    """
    nearest = np.float32(threshold)
    if device.type == "cuda" or float(nearest) <= threshold:
        return float(nearest)
    return float(np.nextafter(nearest, np.float32(-np.inf)))


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    iou_threshold: float,
    score_threshold: float,
    max_outputs: int,
    counts: torch.Tensor | None = None,
    *,
    _launch: Callable[..., None] | None = None,
) -> NMSResult:
    """Per-image, per-class NMS with fixed-size outputs; no host synchronisation on CUDA.

    For each image b: candidates are the rows ``r < counts[b]`` with
    ``scores[b, r] > score_threshold`` (strict, compared in the scores' dtype, like
    torchvision's RoIHeads); the result is ``torchvision.ops.batched_nms`` of the candidates
    (a box is suppressed by a kept, higher-ranked box of the same class with
    IoU > ``iou_threshold``), in its order, cut to the first ``max_outputs``. Equal scores
    rank the lower row first (torchvision's stable sort).

    Args:
        boxes: ``[B, N, 4]`` float, ``(x1, y1, x2, y2)`` in any one frame; computed in float32.
        scores: ``[B, N]`` float.
        classes: ``[B, N]`` int32/int64 class ids (computed as int32).
        iou_threshold: suppress when IoU > this.
        score_threshold: candidates need a score > this.
        max_outputs: K, the fixed number of output slots.
        counts: optional int ``[B]``: rows ``r >= counts[b]`` are padding.

    Returns:
        :class:`NMSResult`. On CUDA, N is limited to 32768 per image.

    ``_launch`` (tests only) replaces the CUDA launcher and forces the CUDA path.
    """
    if boxes.dim() != 3 or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be [B, N, 4], got {tuple(boxes.shape)}")
    images, n = boxes.shape[0], boxes.shape[1]
    if tuple(scores.shape) != (images, n) or tuple(classes.shape) != (images, n):
        raise ValueError(f"scores and classes must be [B={images}, N={n}], got {tuple(scores.shape)}, {tuple(classes.shape)}")
    if not boxes.is_floating_point() or not scores.is_floating_point():
        raise TypeError("boxes and scores must be floating point")
    if classes.is_floating_point() or classes.is_complex():
        raise TypeError(f"classes must be an integer tensor, not {classes.dtype}")
    if max_outputs < 0:
        raise ValueError(f"max_outputs must be >= 0, got {max_outputs}")
    if counts is not None and tuple(counts.shape) != (images,):
        raise ValueError(f"counts must be [B={images}], got {tuple(counts.shape)}")
    device = boxes.device
    if scores.device != device or classes.device != device:
        raise ValueError("boxes, scores and classes must be on one device")
    if math.isnan(iou_threshold):
        raise ValueError("iou_threshold is NaN")

    k = max_outputs
    # Both builds write every slot, so the outputs start uninitialised.
    count = torch.empty((images,), dtype=torch.int32, device=device)
    indices = torch.empty((images, k), dtype=torch.int64, device=device)
    out_boxes = torch.empty((images, k, 4), dtype=torch.float32, device=device)
    out_scores = torch.empty((images, k), dtype=torch.float32, device=device)
    out_classes = torch.empty((images, k), dtype=torch.int64, device=device)

    def result() -> NMSResult:
        return NMSResult(count, indices, out_boxes.to(boxes.dtype), out_scores.to(scores.dtype), out_classes)

    if images == 0 or n == 0 or k == 0:
        for t in (count, out_boxes, out_scores, out_classes):
            t.zero_()
        indices.fill_(-1)
        return result()

    # The comparison torch makes for `scores > score_threshold`: the Python float is
    # rounded to the scores' dtype first.
    score_thr = float(torch.tensor(score_threshold, dtype=scores.dtype).float())
    iou_thr = _iou_threshold_as_float(float(iou_threshold), torch.device("cuda") if _launch else device)
    boxes32 = boxes.to(torch.float32).contiguous()
    scores32 = scores.to(torch.float32).contiguous()
    classes32 = classes.to(torch.int32).contiguous()
    counts32 = None if counts is None else counts.to(device=device, dtype=torch.int32).contiguous()
    p = device_build.pointer

    if device.type == "cpu" and _launch is None:
        host_build.library().segstream_batched_nms(
            boxes32.data_ptr(), scores32.data_ptr(), classes32.data_ptr(), p(counts32),
            images, n, score_thr, iou_thr, k,
            count.data_ptr(), indices.data_ptr(), out_boxes.data_ptr(), out_scores.data_ptr(),
            out_classes.data_ptr(), torch.get_num_threads(),
        )
        return result()
    if device.type != "cuda" and _launch is None:
        raise ValueError(f"unsupported device {device}")
    if n > MAX_CUDA_CANDIDATES:
        raise ValueError(f"CUDA batched_nms takes at most {MAX_CUDA_CANDIDATES} boxes per image, got {n}")

    words = -(-n // 64)
    order = torch.empty((images, n), dtype=torch.int32, device=device)
    sorted_boxes = torch.empty((images, n, 4), dtype=torch.float32, device=device)
    sorted_classes = torch.empty((images, n), dtype=torch.int32, device=device)
    num_valid = torch.empty((images,), dtype=torch.int32, device=device)
    mask = torch.empty((images, n, words), dtype=torch.int64, device=device)
    i32, f32 = ctypes.c_int, ctypes.c_float
    launch = _launch or device_build.launch
    launch(
        device, "segstream_nms_rank", (-(-n // _RANK_THREADS), images, 1), _RANK_THREADS, 0,
        [p(boxes32), p(scores32), p(classes32), p(counts32), i32(n), f32(score_thr),
         p(order), p(sorted_boxes), p(sorted_classes), p(num_valid)],
    )
    launch(
        device, "segstream_nms_mask", (words, words, images), _MASK_THREADS, 0,
        [p(sorted_boxes), p(sorted_classes), p(num_valid), i32(n), f32(iou_thr), p(mask)],
    )
    launch(
        device, "segstream_nms_select", (images, 1, 1), _SELECT_THREADS, words * 8,
        [p(boxes32), p(scores32), p(classes32), p(order), p(num_valid), p(mask), i32(n), i32(k),
         p(count), p(indices), p(out_boxes), p(out_scores), p(out_classes)],
    )
    return result()
