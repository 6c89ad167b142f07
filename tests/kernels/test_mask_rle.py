"""Pasting, thresholding and run-length encoding masks in one kernel gives pycocotools' RLE, byte for byte.

The reference is what the CPU postprocess publishes: `paste_regions` (torchvision's paste on the
box region) placed into the full frame and encoded by `pycocotools.mask.encode`. The host build
is compared with it on random instances, edge cases included (boxes over the frame's edges, boxes
outside it, full-frame boxes, 1-pixel frames); the CUDA build runs the same cases on the CPU
through the project's CUDA emulation and must equal the host build bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from segstream.kernels.mask_rle import compress_counts, mask_rle_counts
from segstream.pipeline.stages.postprocess import paste_regions
from segstream.pipeline.wire.rle import region_from_counts

THRESHOLD = 0.5


def roomy_cap(width: int) -> int:
    """The random masks here carry pixel noise, so their edges are far more ragged than a network's
    masks (default_cap is sized for those): room for every count, so the strings can be compared."""
    return 16 * width + 64


def random_instances(n: int, height: int, width: int, seed: int, m: int = 28):
    """Masks with blobs (and some noise) and boxes of every kind, in frame pixels (clipped as the postprocess does)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1, 5, 5), generator=g)
    masks = torch.nn.functional.interpolate(coarse, size=(m, m), mode="bilinear", align_corners=False)[:, 0]
    masks = (masks + 0.25 * torch.rand((n, m, m), generator=g)).clamp(0, 1)
    masks[0] = 1.0  # solid: runs that span whole columns
    xy = torch.rand((n, 2), generator=g) * torch.tensor([width * 1.2, height * 1.2]) - torch.tensor([width * 0.1, height * 0.1])
    wh = torch.rand((n, 2), generator=g) * torch.tensor([width, height]) * 0.8 + 0.2
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[1] = torch.tensor([0.0, 0.0, width, height])  # the whole frame
    boxes[2] = torch.tensor([width * 0.5, 0.0, width * 2.0, height])  # top to bottom, over the right edge
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return masks, boxes


def reference_strings(masks, boxes, height, width) -> list[str]:
    out = []
    for region, (x0, y0, x1, y1) in paste_regions(masks, boxes, height, width, THRESHOLD):
        full = np.zeros((height, width), dtype=np.uint8)
        full[y0:y1, x0:x1] = region
        out.append(coco_mask.encode(np.asfortranarray(full))["counts"].decode())
    return out


def kernel_strings(result) -> list[str]:
    counts, num = result.counts.numpy(), result.num.numpy()
    assert (num <= counts.shape[1]).all()
    return [compress_counts(counts[i, : num[i]]) for i in range(len(num))]


CASES = [(720, 1280, 40, 0), (180, 320, 60, 1), (37, 53, 60, 2), (1, 1, 8, 3), (5, 3, 30, 4), (240, 96, 30, 5)]


@pytest.mark.parametrize("height, width, n, seed", CASES)
def test_host_build_is_byte_identical_to_pycocotools_on_the_pasted_masks(height, width, n, seed):
    masks, boxes = random_instances(n, height, width, seed)
    sizes = torch.tensor([[height, width]] * n)
    result = mask_rle_counts(masks, boxes, sizes, THRESHOLD, roomy_cap(width))
    assert kernel_strings(result) == reference_strings(masks, boxes, height, width)
    regions = [box for _, box in paste_regions(masks, boxes, height, width, THRESHOLD)]
    assert [tuple(r) for r in result.regions.tolist()] == regions


def test_instances_of_different_frames_in_one_call():
    a_masks, a_boxes = random_instances(6, 180, 320, 7)
    b_masks, b_boxes = random_instances(5, 360, 640, 8)
    sizes = torch.tensor([[180, 320]] * 6 + [[360, 640]] * 5)
    result = mask_rle_counts(torch.cat([a_masks, b_masks]), torch.cat([a_boxes, b_boxes]), sizes, THRESHOLD, roomy_cap(640))
    want = reference_strings(a_masks, a_boxes, 180, 320) + reference_strings(b_masks, b_boxes, 360, 640)
    assert kernel_strings(result) == want


def test_a_row_that_does_not_fit_says_so():
    g = torch.Generator().manual_seed(9)
    masks = (torch.rand((1, 28, 28), generator=g) > 0.5).float()  # a checkerboard-like mask: many runs
    boxes = torch.tensor([[0.0, 0.0, 300.0, 300.0]])
    result = mask_rle_counts(masks, boxes, torch.tensor([[300, 300]]), THRESHOLD, cap=16)
    assert int(result.num[0]) > 16
    full = mask_rle_counts(masks, boxes, torch.tensor([[300, 300]]), THRESHOLD, cap=int(result.num[0]))
    assert kernel_strings(full) == reference_strings(masks, boxes, 300, 300)


@pytest.mark.parametrize("height, width, n, seed", CASES)
def test_the_counts_give_back_the_pasted_regions(height, width, n, seed):
    """What the tracker and the drawing need on the GPU path: the box region, rebuilt from the counts
    (boxes over the whole frame and top to bottom included, where runs cross columns)."""
    masks, boxes = random_instances(n, height, width, seed)
    result = mask_rle_counts(masks, boxes, torch.tensor([[height, width]] * n), THRESHOLD, roomy_cap(width))
    counts, num = result.counts.numpy(), result.num.numpy()
    for i, (region, box) in enumerate(paste_regions(masks, boxes, height, width, THRESHOLD)):
        rebuilt = region_from_counts(counts[i, : num[i]], tuple(result.regions[i].tolist()), height)
        assert rebuilt.shape == region.shape and np.array_equal(rebuilt, region), f"instance {i} at {box}"


def test_counts_with_ones_outside_the_region_are_refused():
    full = np.zeros((40, 30), dtype=np.uint8)
    full[5:10, 3:8] = 1
    full[20, 20] = 1  # outside the region below
    flat = full.ravel(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes]))
    assert compress_counts(counts) == coco_mask.encode(np.asfortranarray(full))["counts"].decode()
    assert np.array_equal(region_from_counts(counts, (0, 0, 30, 40), 40), full.astype(bool))
    with pytest.raises(ValueError, match="outside region"):
        region_from_counts(counts, (3, 5, 8, 10), 40)


def test_no_instances_and_bad_shapes():
    empty = mask_rle_counts(torch.zeros((0, 28, 28)), torch.zeros((0, 4)), torch.zeros((0, 2)), THRESHOLD, 8)
    assert empty.counts.shape == (0, 8)
    with pytest.raises(ValueError, match=r"\[N, M, M\]"):
        mask_rle_counts(torch.zeros((2, 28, 14)), torch.zeros((2, 4)), torch.zeros((2, 2)), THRESHOLD, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_build_equals_the_host_build_without_a_host_sync_and_in_a_cuda_graph():
    masks, boxes = random_instances(40, 720, 1280, 11)
    sizes = torch.tensor([[720, 1280]] * 40)
    cap = roomy_cap(1280)
    host = mask_rle_counts(masks, boxes, sizes, THRESHOLD, cap)
    args = (masks.cuda(), boxes.cuda(), sizes.cuda())
    mask_rle_counts(*args, THRESHOLD, cap)  # compile and load outside the checks
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = mask_rle_counts(*args, THRESHOLD, cap)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = mask_rle_counts(*args, THRESHOLD, cap)
    graph.replay()
    torch.cuda.synchronize()
    for result in (got, replayed):
        assert torch.equal(result.num.cpu(), host.num) and torch.equal(result.regions.cpu(), host.regions)
        counts = result.counts.cpu()
        for i, k in enumerate(host.num.tolist()):
            assert torch.equal(counts[i, :k], host.counts[i, :k]), f"instance {i}"
