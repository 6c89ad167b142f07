"""Mask R-CNN as one fixed-shape graph: what ONNX Runtime and TensorRT take whole.

`StaticMaskRCNN` wraps the modules of a torchvision `MaskRCNN` (same weights, same arithmetic)
and replaces every data-dependent step of torchvision's inference with a fixed-size one:

  backbone+FPN -> RPN head -> per-level top-k (pre_nms_top_n, constant k) -> decode against constant
  anchors -> sigmoid, clip, small boxes scored out -> BatchedNMS over levels (iou 0.7) -> R proposals
  -> MultilevelRoIAlign -> box head -> per-class decode (10,10,5,5) -> softmax, clip, background
  dropped, small boxes and padded proposals scored out -> BatchedNMS per class (score > threshold)
  -> K detections -> MultilevelRoIAlign -> mask head -> sigmoid of each detection's class channel.

Where torchvision filters rows out, the graph keeps them and sets their score below the NMS score
threshold, so the NMS op (which only takes candidates above it) sees the same candidate set in
the same order, and gives the same keep list. Nothing reads a value back to the host.

Inputs:  images      f32 [B, 3, H, W]  normalised RGB, zero-padded to ModelConfig.input_size.
         image_sizes i32 [B, 2]        (height, width) of each frame's area inside the padding;
                                       boxes are clipped to it, as torchvision does.
Outputs: num_detections i32 [B], boxes f32 [B, K, 4] (x1, y1, x2, y2 network-input pixels),
         scores f32 [B, K] (descending), classes i32 [B, K] (1..C), masks f32 [B, K, 28, 28]
         (probabilities over each box); rows at or past num_detections are zero.

With trunk_dtype float16 (the fp16 export for TensorRT) or bfloat16 (the static engine's bf16) the
convolutional trunk and heads run in that dtype on copies of their modules; everything from box
decoding on stays float32.

RoIAlign uses the feature strides (scale 1/stride). torchvision's MultiScaleRoIAlign instead infers
its scales from the tallest frame of the first batch it sees and keeps them; the two agree when that
height is more than H/sqrt(2) of the input, i.e. unless the first frames are much wider than the input.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign

from segstream.engines import custom_ops  # noqa: F401  (registers torch.ops.segstream.*)
from segstream.engines.model_config import ModelConfig

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("num_detections", "boxes", "scores", "classes", "masks")

# Score given to rows torchvision would have filtered out: below every NMS score threshold used.
_DROPPED = -1.0
# RPN keeps scores >= its threshold; the NMS op keeps scores > its threshold. Sigmoid probabilities
# are >= 0, so with torchvision's default 0.0 a threshold halfway to _DROPPED keeps exactly the same.
_RPN_SCORE_FLOOR = -0.5


class _Pooler(nn.Module):
    """One MultiScaleRoIAlign of the network as a call of the MultilevelRoIAlign op."""

    def __init__(self, pooler: MultiScaleRoIAlign, feature_names: list[str], feature_sizes: list[int], height: int):
        super().__init__()
        self.indices = [feature_names.index(name) for name in pooler.featmap_names]
        # Scale per level as torchvision infers it: 2 ** round(log2(feature height / input height)).
        self.scales = [2.0 ** round(math.log2(feature_sizes[i] / height)) for i in self.indices]
        size = pooler.output_size
        self.output_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.sampling_ratio = int(pooler.sampling_ratio)
        mapper = getattr(pooler, "map_levels", None)
        self.canonical_scale = float(getattr(mapper, "s0", 224))
        self.canonical_level = int(getattr(mapper, "lvl0", 4))

    def forward(self, features: list[Tensor], boxes: Tensor, counts: Tensor) -> Tensor:
        """boxes f32 [B,R,4] input pixels, counts i32 [B] -> f32 [B,R,C,S,S] (f16 for f16 maps).

        The kernels read float32 or float16 maps; bfloat16 maps (a bf16 trunk) are pooled in float32.
        """
        maps = [features[i] for i in self.indices]
        if maps[0].dtype == torch.bfloat16:
            maps = [m.float() for m in maps]
        return torch.ops.segstream.multilevel_roi_align(
            maps, boxes, counts, self.output_size, self.scales,
            self.sampling_ratio, False, self.canonical_scale, self.canonical_level,
        )


class _InDtype(nn.Module):
    """A module run in another float dtype: float tensors in (also inside lists and dicts) are cast to it."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def _cast(self, value):
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.to(self.dtype)
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast(v) for v in value)
        if isinstance(value, dict):
            return type(value)((k, self._cast(v)) for k, v in value.items())
        return value

    def forward(self, *args):
        return self.module(*(self._cast(a) for a in args))


class StaticMaskRCNN(nn.Module):
    """A torchvision MaskRCNN's inference as a fixed-shape graph (see the module docstring).

    network: eval-mode MaskRCNN whose modules are shared, not copied (float32 trunk).
    config: gives input_size (H, W), thresholds, rpn top-n counts and K = max_detections.
    trunk_dtype: float16 runs the convolutional trunk and heads (backbone, RPN head, box and mask
        heads and predictors, and the RoIAlign of their features) in half precision on copies of
        the modules; anchors, box decoding, top-k, softmax, NMS and the outputs stay float32.
    """

    def __init__(self, network: MaskRCNN, config: ModelConfig, trunk_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if network.roi_heads.mask_roi_pool is None:
            raise ValueError("the static graph needs a network with a mask head")
        if trunk_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"trunk_dtype must be float32, float16 or bfloat16, not {trunk_dtype}")
        self.config = config
        self.trunk_dtype = trunk_dtype
        roi = network.roi_heads
        trunk = (network.backbone, network.rpn.head, roi.box_head, roi.box_predictor, roi.mask_head, roi.mask_predictor)
        if trunk_dtype != torch.float32:
            # Half-precision copies: the network itself stays as the torch engine uses it.
            trunk = tuple(_InDtype(copy.deepcopy(m), trunk_dtype) for m in trunk)
        self.backbone, self.rpn_head, self.box_head, self.box_predictor, self.mask_head, self.mask_predictor = trunk
        self.rpn_coder = network.rpn.box_coder
        self.box_coder = network.roi_heads.box_coder

        rpn = network.rpn
        self.rpn_min_size = float(rpn.min_size)
        self.rpn_nms = float(rpn.nms_thresh)
        self.rpn_score_threshold = float(rpn.score_thresh)
        if self.rpn_score_threshold < 0:
            raise ValueError("the static RPN assumes a non-negative objectness score threshold")
        roi = network.roi_heads
        self.score_threshold = float(roi.score_thresh)
        self.nms_threshold = float(roi.nms_thresh)
        self.max_detections = int(roi.detections_per_img)

        height, width = config.input_size
        with torch.no_grad():
            device = next(network.parameters()).device
            images = torch.zeros((1, 3, height, width), device=device)
            features = network.backbone(images)
            names = list(features.keys())
            levels = list(features.values())
            anchors = rpn.anchor_generator(ImageList(images, [(height, width)]), levels)[0]
        per_location = rpn.anchor_generator.num_anchors_per_location()
        self.anchors_per_level = [a * f.shape[-2] * f.shape[-1] for a, f in zip(per_location, levels)]
        self.pre_nms_top_n = [min(int(rpn._pre_nms_top_n["testing"]), n) for n in self.anchors_per_level]
        self.num_proposals = min(int(rpn._post_nms_top_n["testing"]), sum(self.pre_nms_top_n))
        # Constants of the graph: the anchors of one image, split per level (x1, y1, x2, y2 input pixels).
        for index, part in enumerate(anchors.split(self.anchors_per_level)):
            self.register_buffer(f"anchors_{index}", part.clone(), persistent=False)
        level_ids = torch.cat([torch.full((k,), i, dtype=torch.int32) for i, k in enumerate(self.pre_nms_top_n)])
        self.register_buffer("proposal_levels", level_ids[None].to(device), persistent=False)

        # Class id and proposal row of each box-head candidate (proposal-major, class-minor), as
        # int32 constants: a traced arange would be folded into an int64 constant by the exporter.
        foreground = config.num_classes - 1
        labels = torch.arange(1, foreground + 1, dtype=torch.int32).repeat(self.num_proposals)
        rows = torch.arange(self.num_proposals, dtype=torch.int32).repeat_interleave(foreground)
        self.register_buffer("candidate_labels", labels[None].to(device), persistent=False)
        self.register_buffer("candidate_rows", rows[None].to(device), persistent=False)

        sizes = [f.shape[-2] for f in levels]
        self.box_pool = _Pooler(roi.box_roi_pool, names, sizes, height)
        self.mask_pool = _Pooler(roi.mask_roi_pool, names, sizes, height)

    def _anchors(self, level: int) -> Tensor:
        return getattr(self, f"anchors_{level}")

    def proposals(self, features: list[Tensor], image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """RPN: -> (count i32 [B], proposals f32 [B,R,4] input pixels, rows past count zero)."""
        objectness, deltas = self.rpn_head(features)
        return self.select_proposals(objectness, deltas, image_sizes)

    def select_proposals(
        self, objectness: list[Tensor], deltas: list[Tensor], image_sizes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The RPN after its head: objectness [B,A,h,w] and deltas [B,4A,h,w] per level -> as `proposals`."""
        objectness, deltas = [t.float() for t in objectness], [t.float() for t in deltas]
        batch = objectness[0].shape[0]
        top_scores, top_deltas, top_anchors = [], [], []
        for level, (logits, regression) in enumerate(zip(objectness, deltas)):
            # torchvision's permute_and_flatten: anchor index = (y * W + x) * A + a.
            _, a, h, w = logits.shape
            logits = logits.permute(0, 2, 3, 1).reshape(batch, h * w * a)
            regression = regression.view(batch, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(batch, h * w * a, 4)
            scores, index = logits.topk(self.pre_nms_top_n[level], dim=1)
            top_scores.append(scores)
            top_deltas.append(torch.gather(regression, 1, index[..., None].expand(-1, -1, 4)))
            top_anchors.append(self._anchors(level)[index])
        logits = torch.cat(top_scores, 1)
        codes = torch.cat(top_deltas, 1)
        anchors = torch.cat(top_anchors, 1)
        count = logits.shape[1]
        boxes = self.rpn_coder.decode_single(codes.reshape(-1, 4), anchors.reshape(-1, 4)).reshape(batch, count, 4)
        boxes = _clip(boxes, image_sizes)
        scores = torch.sigmoid(logits)
        keep = _large_enough(boxes, self.rpn_min_size) & (scores >= self.rpn_score_threshold)
        scores = torch.where(keep, scores, torch.full_like(scores, _DROPPED))
        levels = self.proposal_levels.expand(batch, -1)
        num, _, proposals, _, _ = torch.ops.segstream.batched_nms(
            boxes, scores, levels, self.rpn_nms, _RPN_SCORE_FLOOR, self.num_proposals
        )
        return num, proposals

    def detect(
        self, features: list[Tensor], proposals: Tensor, num_proposals: Tensor, image_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Box head: -> (num i32 [B], boxes f32 [B,K,4], scores f32 [B,K], classes i32 [B,K])."""
        pooled = self.box_pool(features, proposals, num_proposals)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled.flatten(0, 1)))
        return self.select_detections(class_logits, box_regression, proposals, num_proposals, image_sizes)

    def select_detections(
        self, class_logits: Tensor, box_regression: Tensor, proposals: Tensor, num_proposals: Tensor, image_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The box head's outputs (logits [B*R,C], regression [B*R,4C]) on `proposals` [B,R,4] -> as `detect`."""
        class_logits, box_regression = class_logits.float(), box_regression.float()
        batch, rows = proposals.shape[:2]
        classes = class_logits.shape[-1]
        boxes = self.box_coder.decode_single(box_regression, proposals.reshape(-1, 4))
        boxes = _clip(boxes.reshape(batch, rows * classes, 4), image_sizes).reshape(batch, rows, classes, 4)
        scores = torch.softmax(class_logits, -1).reshape(batch, rows, classes)
        # Background dropped; candidate order is torchvision's: proposal-major, class-minor.
        boxes = boxes[:, :, 1:].reshape(batch, rows * (classes - 1), 4)
        scores = scores[:, :, 1:].reshape(batch, rows * (classes - 1))
        labels = self.candidate_labels.expand(batch, -1)
        keep = (self.candidate_rows < num_proposals[:, None]) & _large_enough(boxes, 1e-2)
        scores = torch.where(keep, scores, torch.full_like(scores, _DROPPED))
        num, _, boxes, scores, labels = torch.ops.segstream.batched_nms(
            boxes, scores, labels, self.nms_threshold, self.score_threshold, self.max_detections
        )
        return num, boxes, scores, labels

    def masks(self, features: list[Tensor], boxes: Tensor, num: Tensor, classes: Tensor) -> Tensor:
        """Mask head on the K detections: -> f32 [B,K,M,M] probabilities, zero past num."""
        pooled = self.mask_pool(features, boxes, num)
        logits = self.mask_predictor(self.mask_head(pooled.flatten(0, 1)))
        return self.mask_probabilities(logits, num, classes)

    def mask_probabilities(self, logits: Tensor, num: Tensor, classes: Tensor) -> Tensor:
        """Mask logits f32 [B*K,C,M,M] of the detections -> as `masks` (sigmoid of each one's class channel)."""
        logits = logits.float()
        batch, k = classes.shape[:2]
        size = logits.shape[-1]
        index = classes.reshape(batch * k, 1, 1, 1).to(torch.int64).expand(-1, 1, size, size)
        probabilities = torch.sigmoid(torch.gather(logits, 1, index)).reshape(batch, k, size, size)
        valid = torch.arange(k, device=num.device)[None] < num[:, None]
        return probabilities * valid[:, :, None, None].to(probabilities.dtype)

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """images f32 [B,3,H,W], image_sizes i32 [B,2] -> (num_detections, boxes, scores, classes, masks)."""
        features = list(self.backbone(images).values())
        num_proposals, proposals = self.proposals(features, image_sizes)
        num, boxes, scores, classes = self.detect(features, proposals, num_proposals, image_sizes)
        masks = self.masks(features, boxes, num, classes)
        return num, boxes, scores, classes, masks


def _clip(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """boxes f32 [B,N,4] clamped into [0, width] x [0, height] of each image (image_sizes i32 [B,2] = h, w)."""
    sizes = image_sizes.to(boxes.dtype)
    height = sizes[:, 0, None]
    width = sizes[:, 1, None]
    zero = torch.zeros_like(boxes[..., 0])
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), width)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), height)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), width)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), height)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def _large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """torchvision's remove_small_boxes as a mask: bool [B,N], width and height >= min_size."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def padded_image_sizes(image_sizes: list[tuple[int, int]], max_batch: int, input_size: tuple[int, int]) -> torch.Tensor:
    """int32 [max_batch, 2] `image_sizes` input of the fixed-batch graph; missing images count as full size."""
    if len(image_sizes) > max_batch:
        raise ValueError(f"batch of {len(image_sizes)} exceeds max_batch {max_batch}")
    rows = [list(s) for s in image_sizes] + [list(input_size)] * (max_batch - len(image_sizes))
    return torch.tensor(rows, dtype=torch.int32)


def split_detections(
    counts: list[int], boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor
) -> list["Detections"]:
    """Per-image Detections (owned copies) of the graph's fixed-size outputs, first counts[b] rows of image b."""
    from segstream.engines.protocol import Detections

    return [
        Detections(boxes[b, :n].clone(), scores[b, :n].clone(), classes[b, :n].to(torch.int64, copy=True), masks[b, :n].clone())
        for b, n in enumerate(counts)
    ]
