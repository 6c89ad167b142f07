"""Small models and frames shared by the export tests (imported by conftest and the test modules).

A compact Mask R-CNN with random weights and a low score threshold: random box-head scores sit
near 1/classes, so a 0.05 threshold yields a full set of K detections per image and every stage
of the graph (top-k, both NMS, both RoIAligns, the mask channel pick) runs on many boxes.
"""

from __future__ import annotations

import torch

from segstream.engines.model_config import ModelConfig
from segstream.engines.models import SHAPES_CLASSES, LoadedModel, apply_test_thresholds, build_network

INPUT_SIZE = (256, 320)
ONNX_BATCH = 2


def small_model(seed: int = 0, input_size: tuple[int, int] = INPUT_SIZE, **changes) -> LoadedModel:
    config = ModelConfig(
        architecture="compact", class_names=SHAPES_CLASSES, input_size=input_size, score_threshold=0.05,
        max_detections=20, rpn_pre_nms_top_n=300, rpn_post_nms_top_n=150,
    ).replace(**changes)
    torch.manual_seed(seed)
    network = build_network(config)
    apply_test_thresholds(network, config)
    network.eval()
    return LoadedModel(config=config, network=network, placeholder=True, source=f"random seed {seed}")


def frames(count: int, input_size: tuple[int, int] = INPUT_SIZE, seed: int = 1) -> torch.Tensor:
    """Normalised-looking input: smooth blobs plus noise, float32 [count, 3, H, W]."""
    g = torch.Generator().manual_seed(seed)
    h, w = input_size
    coarse = torch.randn((count, 3, h // 16, w // 16), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return smooth + 0.3 * torch.randn((count, 3, h, w), generator=g)
