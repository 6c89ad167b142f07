"""segstream.kernels.batched_nms against torchvision.ops.batched_nms (keep set and order).

torchvision's batched_nms takes one of two paths by size: below 4000 box coordinates on the CPU
(100000 on CUDA) it offsets each class's boxes by class * (max coordinate + 1) and runs one nms;
above, it runs nms per class. The offsets round arbitrary float coordinates, so on arbitrary
floats the two paths can disagree on an IoU that sits at the threshold. The cases therefore
compare with the per-class path on arbitrary floats, and with the offset path on coordinates the
offsets do not round (multiples of 1/8 below 1024). The per-class path sorts its result with an
unstable sort, so reference orders are canonicalised to torchvision's own nms order (stable:
equal scores keep row order) before the first K are taken.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from segstream import kernels

from cases import CUDA, DEVICES, assert_nms_matches, nms_case, nms_reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_path_many_classes(device: str, iou: float, seed: int) -> None:
    boxes, scores, labels = nms_case(2, 1500, 80, seed)
    boxes, scores, labels = boxes.to(device), scores.to(device), labels.to(device)
    expected = nms_reference(boxes, scores, labels, iou, 0.05, 1500)

    got = kernels.batched_nms(boxes, scores, labels, iou, 0.05, 1500)

    assert_nms_matches(got, boxes, scores, labels, expected, 1500)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [3, 4])
def test_offset_path_on_exact_coordinates(device: str, seed: int) -> None:
    boxes, scores, labels = nms_case(3, 300, 6, seed, quantized=True)
    boxes, scores, labels = boxes.to(device), scores.to(device), labels.to(device)
    expected = nms_reference(boxes, scores, labels, 0.5, 0.0, 300, per_class=False)

    got = kernels.batched_nms(boxes, scores, labels, 0.5, 0.0, 300)

    assert_nms_matches(got, boxes, scores, labels, expected, 300)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 10, 100])
def test_tied_scores_and_first_k(device: str, k: int) -> None:
    boxes, scores, labels = nms_case(2, 800, 3, 5, tied_scores=True)
    boxes, scores, labels = boxes.to(device), scores.to(device), labels.to(device)
    expected = nms_reference(boxes, scores, labels, 0.5, 0.2, k)

    got = kernels.batched_nms(boxes, scores, labels, 0.5, 0.2, k)

    assert_nms_matches(got, boxes, scores, labels, expected, k)


@pytest.mark.parametrize("device", DEVICES)
def test_identical_boxes_keep_lowest_row(device: str) -> None:
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]] * 5], device=device)
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.9]], device=device)
    labels = torch.tensor([[1, 1, 1, 1, 2]], device=device)

    got = kernels.batched_nms(boxes, scores, labels, 0.5, 0.05, 4)

    assert got.indices.tolist() == [[1, 4, -1, -1]] and got.count.tolist() == [2]


@pytest.mark.parametrize("device", DEVICES)
def test_counts_score_threshold_and_padding(device: str) -> None:
    boxes, scores, labels = nms_case(3, 400, 10, 6)
    boxes, scores, labels = boxes.to(device), scores.to(device), labels.to(device)
    counts = [400, 123, 0]
    expected = nms_reference(boxes, scores, labels, 0.6, 0.5, 50, counts=counts)

    got = kernels.batched_nms(
        boxes, scores, labels, 0.6, 0.5, 50, counts=torch.tensor(counts, dtype=torch.int32, device=device)
    )

    assert_nms_matches(got, boxes, scores, labels, expected, 50)
    # The threshold is strict: a score equal to it is not a candidate.
    at = kernels.batched_nms(boxes[:1, :1], torch.full((1, 1), 0.25, device=device), labels[:1, :1], 0.5, 0.25, 3)
    assert at.count.tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_float16_and_int32_inputs(device: str) -> None:
    boxes, scores, labels = nms_case(1, 600, 20, 8, quantized=True)
    boxes16 = boxes.clamp(-200, 1000).half().to(device)
    scores16 = scores.half().to(device)
    labels32 = labels.to(torch.int32).to(device)
    # torchvision's CPU nms has no float16 kernel; its keep set on the float32 copies of the
    # same values is the reference (the IoU is computed in float32 either way).
    expected = nms_reference(boxes16.float(), scores16.float(), labels32, 0.5, 0.05, 200)

    got = kernels.batched_nms(boxes16, scores16, labels32, 0.5, 0.05, 200)

    assert_nms_matches(got, boxes16, scores16, labels32, expected, 200)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device: str) -> None:
    z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    none = kernels.batched_nms(z(2, 0, 4), z(2, 0), z(2, 0).long(), 0.5, 0.05, 5)
    assert none.count.tolist() == [0, 0] and none.indices.tolist() == [[-1] * 5] * 2
    below = kernels.batched_nms(z(1, 7, 4), z(1, 7), z(1, 7).long(), 0.5, 0.05, 5)
    assert below.count.tolist() == [0] and (below.indices == -1).all()
    assert kernels.batched_nms(z(0, 7, 4), z(0, 7), z(0, 7).long(), 0.5, 0.05, 5).indices.shape == (0, 5)
    assert kernels.batched_nms(z(1, 7, 4), z(1, 7) + 1, z(1, 7).long(), 0.5, 0.05, 0).indices.shape == (1, 0)


def test_iou_threshold_compares_like_torchvision_cpu() -> None:
    # Box pairs whose float32 IoU is exactly float32(0.3), which lies above the double 0.3:
    # torchvision's CPU nms compares in double and suppresses; a plain float comparison
    # against float32(0.3) would keep both.
    target = np.float32(0.3)
    heights = np.float32(3.0) + np.arange(-2000, 2000, dtype=np.float32) * np.float32(2.4e-7)
    inter = np.float32(10.0) * heights  # box [0, 0, 10, h] inside box [0, 0, 10, 10]
    iou = inter / ((np.float32(100.0) + inter) - inter)
    heights = heights[iou == target]
    assert len(heights) > 0
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]] + [[0.0, 0.0, 10.0, float(h)] for h in heights]])
    scores = torch.linspace(0.9, 0.5, boxes.shape[1])[None]
    labels = torch.zeros(1, boxes.shape[1], dtype=torch.int64)
    expected = torchvision.ops.nms(boxes[0], scores[0], 0.3)
    assert expected.tolist() == [0], "torchvision suppresses at IoU == float32(0.3)"

    got = kernels.batched_nms(boxes, scores, labels, 0.3, 0.0, 4)

    assert got.indices[0, : got.count[0]].tolist() == expected.tolist()


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine: CUDA build not run")
def test_cuda_path_has_no_host_sync_and_replays_in_a_graph() -> None:
    boxes, scores, labels = nms_case(2, 1000, 80, 9)
    boxes, scores, labels = boxes.cuda(), scores.cuda(), labels.cuda()
    feats = [torch.rand(2, 8, 64 // 2**i, 80 // 2**i, device="cuda") for i in range(4)]
    eager = kernels.batched_nms(boxes, scores, labels, 0.5, 0.05, 100)  # compiles and loads outside the capture
    pooled_eager = kernels.multilevel_roi_align(feats, boxes, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    torch.cuda.synchronize()

    torch.cuda.set_sync_debug_mode("error")
    try:
        kernels.batched_nms(boxes, scores, labels, 0.5, 0.05, 100)
        kernels.multilevel_roi_align(feats, boxes, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    finally:
        torch.cuda.set_sync_debug_mode("default")

    graph = torch.cuda.CUDAGraph()
    static_scores = scores.clone()
    with torch.cuda.graph(graph):
        captured = kernels.batched_nms(boxes, static_scores, labels, 0.5, 0.05, 100)
        pooled = kernels.multilevel_roi_align(feats, boxes, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    static_scores.copy_(scores.flip(1))
    graph.replay()
    torch.cuda.synchronize()
    flipped = kernels.batched_nms(boxes, scores.flip(1), labels, 0.5, 0.05, 100)
    assert torch.equal(captured.indices, flipped.indices) and torch.equal(captured.count, flipped.count)
    assert torch.equal(pooled, pooled_eager)
    assert not torch.equal(eager.indices, flipped.indices)
