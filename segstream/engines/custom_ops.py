"""The two custom operators of the static graph, as torch ops and as ONNX nodes.

`torch.ops.segstream.multilevel_roi_align` and `torch.ops.segstream.batched_nms` are fixed-shape
versions of torchvision's `MultiScaleRoIAlign` and `batched_nms`: every output has a shape that
depends only on input shapes and attributes, so a graph built from them has no data-dependent
shapes and no host synchronisation. They export (TorchScript-based ONNX exporter) as single nodes
in domain `segstream`, the names and attributes the TensorRT plugins register
(segstream/kernels/tensorrt_plugins.py):

    MultilevelRoIAlign(boxes f32 [B,R,4], counts i32 [B], feature_0 .. feature_{L-1} f32 [B,C,H_l,W_l])
        -> pooled f32 [B,R,C,S,S]
        attributes: output_size:int S, spatial_scales:floats (L), sampling_ratio:int, aligned:int (0/1),
                    canonical_scale:float, canonical_level:int
    BatchedNMS(boxes f32 [B,N,4], scores f32 [B,N], classes i32 [B,N])
        -> count i32 [B], indices i32 [B,K], boxes f32 [B,K,4], scores f32 [B,K], classes i32 [B,K]
        attributes: iou_threshold:float, score_threshold:float, max_outputs:int K

Boxes are (x1, y1, x2, y2) in network-input pixels. Rows past `count` are padding: index -1,
zero box, zero score, class 0; RoIAlign gives zeros for rows at or past `counts[b]`.

Both run on `segstream.kernels`: its C++ build for CPU tensors (the same `__host__ __device__` code
the CUDA kernels use), its NVRTC build for CUDA tensors. `reference_*` below compute the same with
torchvision in loops; they are the test oracle.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision
from torch import Tensor

DOMAIN = "segstream"
ROI_ALIGN_NODE = "MultilevelRoIAlign"
NMS_NODE = "BatchedNMS"
ONNX_OPSET = 17


# ---------------------------------------------------------------- reference (torchvision) paths


def reference_multilevel_roi_align(
    features: Sequence[Tensor],
    boxes: Tensor,
    counts: Tensor,
    output_size: int,
    spatial_scales: Sequence[float],
    sampling_ratio: int = 2,
    aligned: bool = False,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """torchvision's MultiScaleRoIAlign over padded boxes [B,R,4]; returns f32 [B,R,C,S,S].

    Level choice is torchvision's LevelMapper: floor(canonical_level + log2(sqrt(area)/canonical_scale)
    + 1e-6) clamped to the levels present (k_min = -log2(spatial_scales[0])).
    """
    batch, rows = boxes.shape[:2]
    channels = features[0].shape[1]
    out = features[0].new_zeros((batch, rows, channels, output_size, output_size))
    k_min = int(-math.log2(spatial_scales[0]))
    k_max = int(-math.log2(spatial_scales[-1]))
    for b in range(batch):
        n = int(counts[b])
        if n <= 0:
            continue
        image_boxes = boxes[b, :n]
        area = torchvision.ops.box_area(image_boxes)
        levels = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_scale) + torch.tensor(1e-6))
        levels = torch.clamp(levels, min=k_min, max=k_max).to(torch.int64) - k_min
        rois = torch.cat([image_boxes.new_zeros((n, 1)), image_boxes], dim=1)
        for level, (feature, scale) in enumerate(zip(features, spatial_scales)):
            which = torch.where(levels == level)[0]
            if which.numel() == 0:
                continue
            pooled = torchvision.ops.roi_align(
                feature[b : b + 1], rois[which], output_size, spatial_scale=scale,
                sampling_ratio=sampling_ratio, aligned=aligned,
            )
            out[b, which] = pooled
    return out


def reference_batched_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, score_threshold: float, max_outputs: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per image: candidates with score > score_threshold, torchvision.ops.batched_nms, first K.

    boxes f32 [B,N,4], scores f32 [B,N], classes int [B,N] -> (count i32 [B], indices i32 [B,K],
    boxes f32 [B,K,4], scores f32 [B,K], classes i32 [B,K]), padded as the module docstring says.
    """
    batch = boxes.shape[0]
    k = max_outputs
    count = torch.zeros((batch,), dtype=torch.int32)
    indices = torch.full((batch, k), -1, dtype=torch.int32)
    out_boxes = boxes.new_zeros((batch, k, 4))
    out_scores = scores.new_zeros((batch, k))
    out_classes = torch.zeros((batch, k), dtype=torch.int32)
    for b in range(batch):
        candidates = torch.where(scores[b] > score_threshold)[0]
        keep = torchvision.ops.batched_nms(
            boxes[b, candidates], scores[b, candidates], classes[b, candidates].to(torch.int64), iou_threshold
        )
        kept = candidates[keep[:k]]
        n = kept.numel()
        count[b] = n
        indices[b, :n] = kept.to(torch.int32)
        out_boxes[b, :n] = boxes[b, kept]
        out_scores[b, :n] = scores[b, kept]
        out_classes[b, :n] = classes[b, kept].to(torch.int32)
    return count, indices, out_boxes, out_scores, out_classes


# ---------------------------------------------------------------- CPU kernels of segstream.kernels


def run_multilevel_roi_align(
    features: Sequence[Tensor],
    boxes: Tensor,
    counts: Tensor,
    output_size: int,
    spatial_scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: int,
) -> Tensor:
    """MultilevelRoIAlign on segstream.kernels (CPU or CUDA tensors); shapes as in the module docstring."""
    from segstream.kernels import multilevel_roi_align as kernel

    return kernel(
        list(features), boxes, output_size, list(spatial_scales), sampling_ratio=sampling_ratio,
        aligned=aligned, canonical_scale=canonical_scale, canonical_level=canonical_level,
        counts=counts.to(torch.int32),
    )


def run_batched_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, score_threshold: float, max_outputs: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """BatchedNMS on segstream.kernels; returns (count, indices, boxes, scores, classes) as in the module docstring."""
    from segstream.kernels import batched_nms as kernel

    result = kernel(boxes, scores, classes, iou_threshold, score_threshold, max_outputs)
    return (
        result.count.to(torch.int32),
        result.indices.to(torch.int32),
        result.boxes,
        result.scores,
        result.classes.to(torch.int32),
    )


# ---------------------------------------------------------------- torch custom ops


@torch.library.custom_op("segstream::multilevel_roi_align", mutates_args=())
def multilevel_roi_align(
    features: list[Tensor],
    boxes: Tensor,
    counts: Tensor,
    output_size: int,
    spatial_scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: int,
) -> Tensor:
    """Fixed-shape multi-level RoIAlign: features L x f32 [B,C,H_l,W_l], boxes f32 [B,R,4] (input pixels),
    counts i32 [B] (valid rows) -> f32 [B,R,C,S,S]."""
    return run_multilevel_roi_align(
        features, boxes, counts, output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level
    )


@multilevel_roi_align.register_fake
def _(features, boxes, counts, output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level):
    batch, rows = boxes.shape[:2]
    return features[0].new_empty((batch, rows, features[0].shape[1], output_size, output_size))


@torch.library.custom_op("segstream::batched_nms", mutates_args=())
def batched_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, score_threshold: float, max_outputs: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fixed-shape per-class NMS: boxes f32 [B,N,4], scores f32 [B,N], classes i32 [B,N] ->
    (count i32 [B], indices i32 [B,K], boxes f32 [B,K,4], scores f32 [B,K], classes i32 [B,K])."""
    return run_batched_nms(boxes, scores, classes, iou_threshold, score_threshold, max_outputs)


@batched_nms.register_fake
def _(boxes, scores, classes, iou_threshold, score_threshold, max_outputs):
    batch = boxes.shape[0]
    k = max_outputs
    return (
        boxes.new_empty((batch,), dtype=torch.int32),
        boxes.new_empty((batch, k), dtype=torch.int32),
        boxes.new_empty((batch, k, 4)),
        boxes.new_empty((batch, k)),
        boxes.new_empty((batch, k), dtype=torch.int32),
    )


# ---------------------------------------------------------------- ONNX symbolics (TorchScript exporter)


def _copy_traced_types(g, values) -> None:
    """Give the new node's outputs the dtypes and static shapes the trace recorded for the torch op.

    ONNX shape inference cannot see through a custom node, and the exporter's own inference loses
    the shapes upstream of it; the traced op's outputs have them exactly.
    """
    for value, traced in zip(values, g.original_node.outputs()):
        value.setType(traced.type())


def _roi_align_symbolic(g, features, boxes, counts, output_size, spatial_scales, sampling_ratio, aligned,
                        canonical_scale, canonical_level):
    from torch.onnx import symbolic_helper as sh

    feature_values = sh._unpack_list(features)
    pooled = g.op(
        f"{DOMAIN}::{ROI_ALIGN_NODE}",
        boxes,
        counts,
        *feature_values,
        output_size_i=sh._get_const(output_size, "i", "output_size"),
        spatial_scales_f=sh._get_const(spatial_scales, "fs", "spatial_scales"),
        sampling_ratio_i=sh._get_const(sampling_ratio, "i", "sampling_ratio"),
        aligned_i=int(sh._get_const(aligned, "b", "aligned")),
        canonical_scale_f=sh._get_const(canonical_scale, "f", "canonical_scale"),
        canonical_level_i=sh._get_const(canonical_level, "i", "canonical_level"),
    )
    _copy_traced_types(g, [pooled])
    return pooled


def _nms_symbolic(g, boxes, scores, classes, iou_threshold, score_threshold, max_outputs):
    from torch.onnx import symbolic_helper as sh

    outs = g.op(
        f"{DOMAIN}::{NMS_NODE}",
        boxes,
        scores,
        classes,
        iou_threshold_f=sh._get_const(iou_threshold, "f", "iou_threshold"),
        score_threshold_f=sh._get_const(score_threshold, "f", "score_threshold"),
        max_outputs_i=sh._get_const(max_outputs, "i", "max_outputs"),
        outputs=5,
    )
    _copy_traced_types(g, outs)
    return outs


_registered = False


def register_onnx_symbolics() -> None:
    """Make torch.onnx.export(dynamo=False) emit the segstream-domain nodes (idempotent)."""
    global _registered
    if _registered:
        return
    torch.onnx.register_custom_op_symbolic("segstream::multilevel_roi_align", _roi_align_symbolic, ONNX_OPSET)
    torch.onnx.register_custom_op_symbolic("segstream::batched_nms", _nms_symbolic, ONNX_OPSET)
    _registered = True
