"""The compact Mask R-CNN: a small CPU-friendly network in torchvision's MaskRCNN frame.

The network is torchvision's `MaskRCNN` with a home-made plain residual backbone (BatchNorm,
ReLU, dense 3x3 convolutions: on a CPU these run at a far better FLOP rate than depthwise
convolutions), a slim FPN over strides 4/8/16/32, anchors matched to the object sizes the model is
meant for, and slim box and mask heads. Everything that shapes the network comes from
`ModelConfig.options`, so training and inference build bit-identical modules from the checkpoint.

The model's own `GeneralizedRCNNTransform` is set up so that calling `model(images)` on frames of
any size resizes them to fit `config.input_size` and zero-pads bottom/right to it, exactly as the
pipeline's preprocess does before it calls `model.backbone`, `model.rpn` and `model.roi_heads`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

from segstream.engines.model_config import ModelConfig

#: Architecture knobs of the shipped shapes model; a checkpoint's options override them key by key.
DEFAULT_OPTIONS: dict[str, Any] = {
    "stem_channels": 24,
    # (channels, residual blocks) of the stages at strides 4, 8, 16, 32.
    "stages": [[32, 1], [64, 2], [96, 2], [128, 1]],
    "fpn_channels": 64,
    # Anchor sizes (input pixels) of the FPN levels at strides 4, 8, 16, 32.
    "anchor_sizes": [[16, 24], [32, 48], [64, 96], [128, 192]],
    "aspect_ratios": [0.5, 1.0, 2.0],
    # FPN levels the RoI heads pool from. torchvision's level rule (canonical box 224 px on
    # level 4) sends every object smaller than 224 px to the finest level offered, so these
    # pick the level. The shapes model sets box_levels to ["p4", "p5"]: its box head classifies
    # from deeper stride-16 features (a shape's identity needs a wide receptive field), while the
    # mask head draws from stride-4 ones (sharp outlines).
    "box_levels": ["p2", "p3", "p4", "p5"],
    "mask_levels": ["p2", "p3", "p4", "p5"],
    "box_representation": 256,
    "mask_layers": [64, 64, 64, 64],
    "mask_predictor_channels": 64,
    # Training-time sampling; test-time proposal counts come from ModelConfig.
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 400,
    "rpn_batch_size_per_image": 128,
    "box_batch_size_per_image": 128,
}

LEVEL_NAMES = ("p2", "p3", "p4", "p5")


def compact_options(config: ModelConfig) -> dict[str, Any]:
    """DEFAULT_OPTIONS updated with the config's own options."""
    options = dict(DEFAULT_OPTIONS)
    options.update(config.options or {})
    return options


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_ConvBN(channels, channels), _ConvBN(channels, channels, relu=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.body(x))


class CompactBackbone(nn.Module):
    """Plain residual CNN + FPN.

    Input: float32 [B, 3, H, W], H and W multiples of 32 (normalised RGB).
    Output: OrderedDict p2..p5 of float32 [B, fpn_channels, H/s, W/s], s = 4, 8, 16, 32.
    `out_channels` is what torchvision's detection heads read.
    """

    def __init__(self, stem_channels: int, stages: list[list[int]], fpn_channels: int) -> None:
        super().__init__()
        self.stem = _ConvBN(3, stem_channels, stride=2)
        blocks = []
        cin = stem_channels
        for cout, depth in stages:
            layers: list[nn.Module] = [_ConvBN(cin, cout, stride=2)]
            layers += [_Residual(cout) for _ in range(depth)]
            blocks.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(blocks)
        self.fpn = FeaturePyramidNetwork([c for c, _ in stages], fpn_channels)
        self.out_channels = fpn_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m not in set(self.fpn.modules()):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.stem(x)
        feats = OrderedDict()
        for name, stage in zip(LEVEL_NAMES, self.stages):
            x = stage(x)
            feats[name] = x
        return self.fpn(feats)


def build_compact_maskrcnn(config: ModelConfig) -> MaskRCNN:
    """The compact Mask R-CNN described by `config` (random weights; load a state_dict after).

    Test-time thresholds (score, NMS, detections per image, RPN proposal counts) come from the
    config; training-time sampling sizes from `config.options`. Returns the model in train mode,
    as torchvision constructs it.
    """
    opt = compact_options(config)
    backbone = CompactBackbone(int(opt["stem_channels"]), [list(s) for s in opt["stages"]], int(opt["fpn_channels"]))
    sizes = tuple(tuple(int(s) for s in level) for level in opt["anchor_sizes"])
    ratios = tuple(float(r) for r in opt["aspect_ratios"])
    anchors = AnchorGenerator(sizes, (ratios,) * len(sizes))
    box_levels = [str(n) for n in opt["box_levels"]]
    mask_levels = [str(n) for n in opt["mask_levels"]]
    ch = backbone.out_channels
    rep = int(opt["box_representation"])
    mask_layers = [int(c) for c in opt["mask_layers"]]
    height, width = config.input_size
    return MaskRCNN(
        backbone,
        num_classes=None,  # the predictors below fix it
        # A frame is scaled by min(min_size/short side, max_size/long side): fits inside input_size.
        min_size=min(height, width),
        max_size=max(height, width),
        image_mean=list(config.mean),
        image_std=list(config.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=int(opt["rpn_pre_nms_top_n_train"]),
        rpn_post_nms_top_n_train=int(opt["rpn_post_nms_top_n_train"]),
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n,
        rpn_batch_size_per_image=int(opt["rpn_batch_size_per_image"]),
        box_roi_pool=MultiScaleRoIAlign(box_levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(ch * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, config.num_classes),
        box_score_thresh=config.score_threshold,
        box_nms_thresh=config.nms_threshold,
        box_detections_per_img=config.max_detections,
        box_batch_size_per_image=int(opt["box_batch_size_per_image"]),
        mask_roi_pool=MultiScaleRoIAlign(mask_levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(ch, mask_layers, 1),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], int(opt["mask_predictor_channels"]), config.num_classes),
    )
