"""The static graph gives torchvision's detections: same weights, same frames, same instances."""

from __future__ import annotations

import pytest
import torch

from export_models import frames, small_model
from segstream.engines import custom_ops
from segstream.engines.static_graph import StaticMaskRCNN
from segstream.engines.torch_engine import TorchEngine


def assert_same_detections(reference, num, boxes, scores, classes, masks, atol=1e-4):
    for b, expected in enumerate(reference):
        n = int(num[b])
        assert n == len(expected), f"image {b}: {n} detections, eager has {len(expected)}"
        torch.testing.assert_close(boxes[b, :n], expected.boxes, atol=atol, rtol=0)
        torch.testing.assert_close(scores[b, :n], expected.scores, atol=atol, rtol=0)
        assert torch.equal(classes[b, :n].to(torch.int64), expected.classes)
        torch.testing.assert_close(masks[b, :n], expected.masks, atol=atol, rtol=0)
        # Padding rows are zero, so a consumer that ignores num_detections sees nothing there.
        assert not boxes[b, n:].any() and not scores[b, n:].any() and not masks[b, n:].any()


@pytest.mark.parametrize(
    "changes, sizes",
    [
        ({}, [(256, 320), (224, 320)]),  # second frame letterboxed: boxes clipped to its area
        ({"score_threshold": 0.19, "max_detections": 50, "nms_threshold": 0.3}, [(256, 288), (256, 320)]),
    ],
)
def test_static_graph_equals_eager_torchvision(changes, sizes):
    model = small_model(seed=3, **changes)
    images = frames(2, seed=5)
    for b, (h, w) in enumerate(sizes):
        images[b, :, h:, :] = 0
        images[b, :, :, w:] = 0
    with torch.inference_mode():
        reference = TorchEngine(model, "cpu", 2).infer(images, sizes)
        out = StaticMaskRCNN(model.network, model.config).eval()(images, torch.tensor(sizes, dtype=torch.int32))
    assert all(len(r) > 0 for r in reference)
    assert_same_detections(reference, *out)


def test_graph_shapes_are_fixed_whatever_is_found():
    model = small_model(seed=4, score_threshold=0.99)  # random weights: nothing passes
    graph = StaticMaskRCNN(model.network, model.config).eval()
    with torch.inference_mode():
        num, boxes, scores, classes, masks = graph(frames(1), torch.tensor([[256, 320]], dtype=torch.int32))
    k = model.config.max_detections
    assert num.tolist() == [0]
    assert (num.dtype, classes.dtype) == (torch.int32, torch.int32)
    assert boxes.shape == (1, k, 4) and scores.shape == (1, k) and masks.shape == (1, k, 28, 28)


def test_nms_op_matches_torchvision_keep_order():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand((2, 400, 2), generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand((2, 400, 2), generator=g) * 60], -1)
    scores = torch.rand((2, 400), generator=g)
    classes = torch.randint(1, 4, (2, 400), generator=g, dtype=torch.int32)
    got = torch.ops.segstream.batched_nms(boxes, scores, classes, 0.5, 0.2, 60)
    want = custom_ops.reference_batched_nms(boxes, scores, classes, 0.5, 0.2, 60)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_roi_align_op_matches_torchvision_multiscale_roi_align():
    g = torch.Generator().manual_seed(1)
    features = [torch.randn((2, 8, 64 // s, 80 // s), generator=g) for s in (1, 2, 4, 8)]
    xy = torch.rand((2, 30, 2), generator=g) * 200
    boxes = torch.cat([xy, xy + 1 + torch.rand((2, 30, 2), generator=g) * 120], -1)
    counts = torch.tensor([30, 17], dtype=torch.int32)
    scales = [0.25, 0.125, 0.0625, 0.03125]
    got = torch.ops.segstream.multilevel_roi_align(features, boxes, counts, 7, scales, 2, False, 224.0, 4)
    want = custom_ops.reference_multilevel_roi_align(features, boxes, counts, 7, scales)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not got[1, 17:].any()


def test_static_graph_equals_eager_for_torchvision_resnet50_fpn():
    # torchvision's COCO architecture (random weights): five RPN levels (with 'pool'), RoIAlign on four.
    from segstream.engines.model_config import ModelConfig
    from segstream.engines.models import LoadedModel, apply_test_thresholds, build_network

    config = ModelConfig(
        architecture="resnet50_fpn", class_names=("__background__", *(f"c{i}" for i in range(1, 11))),
        input_size=(128, 160), score_threshold=0.05, max_detections=30, rpn_pre_nms_top_n=400,
        rpn_post_nms_top_n=200,
    )
    torch.manual_seed(0)
    network = build_network(config)
    apply_test_thresholds(network, config)
    network.eval()
    model = LoadedModel(config, network, True, "random")
    images = frames(1, (128, 160), seed=9)
    with torch.inference_mode():
        reference = TorchEngine(model, "cpu", 1).infer(images, [(128, 160)])
        graph = StaticMaskRCNN(network, config).eval()
        out = graph(images, torch.tensor([[128, 160]], dtype=torch.int32))
    assert len(graph.anchors_per_level) == 5
    assert len(reference[0]) > 0
    assert_same_detections(reference, *out)


def test_fp16_trunk_finds_the_same_instances_as_eager_fp32():
    from torchvision.ops import box_iou

    model = small_model(seed=3)
    images = frames(2, seed=5)
    sizes = [(256, 320), (256, 320)]
    with torch.inference_mode():
        reference = TorchEngine(model, "cpu", 2).infer(images, sizes)
        graph = StaticMaskRCNN(model.network, model.config, torch.float16).eval()
        num, boxes, scores, classes, masks = graph(images, torch.tensor(sizes, dtype=torch.int32))
    assert next(model.network.parameters()).dtype == torch.float32  # the network itself is untouched
    assert (boxes.dtype, scores.dtype, masks.dtype, classes.dtype) == (torch.float32,) * 3 + (torch.int32,)
    for b, expected in enumerate(reference):
        n = int(num[b])
        assert n == len(expected)
        best, index = box_iou(boxes[b, :n], expected.boxes).max(1)
        matched = (best > 0.9) & (classes[b, :n].long() == expected.classes[index])
        assert matched.float().mean() >= 0.9
        torch.testing.assert_close(scores[b, :n][matched], expected.scores[index][matched], atol=5e-3, rtol=0)
