"""segstream.kernels.host_ops (numpy in, numpy out, no torch) gives what torchvision gives: the keep set
and order of batched_nms, and MultiScaleRoIAlign's values on channels-last maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segstream.kernels import host_ops

from cases import SCALES, fpn_maps, nms_case, nms_reference, random_boxes, roi_align_reference


@pytest.mark.parametrize("iou, seed", [(0.5, 0), (0.7, 1)])
def test_numpy_batched_nms_keeps_torchvisions_boxes_in_its_order(iou: float, seed: int) -> None:
    boxes, scores, labels = nms_case(2, 1200, 20, seed)
    counts = [1200, 900]
    expected = nms_reference(boxes, scores, labels, iou, 0.05, 300, counts=counts)

    got = host_ops.batched_nms(boxes.numpy(), scores.numpy(), labels.numpy(), iou, 0.05, 300,
                               counts=np.array(counts))

    assert got.count.dtype == np.int32 and got.indices.dtype == np.int64 and got.boxes.dtype == np.float32
    for b, keep in enumerate(expected):
        n = len(keep)
        assert got.count[b] == n
        assert got.indices[b, :n].tolist() == keep.tolist()
        assert (got.indices[b, n:] == -1).all() and (got.scores[b, n:] == 0).all()
        np.testing.assert_array_equal(got.boxes[b, :n], boxes[b, keep].numpy())
        np.testing.assert_array_equal(got.classes[b, :n], labels[b, keep].numpy())


def test_numpy_batched_nms_with_nothing_to_keep() -> None:
    got = host_ops.batched_nms(np.zeros((1, 0, 4), np.float32), np.zeros((1, 0), np.float32),
                               np.zeros((1, 0), np.int64), 0.5, 0.05, 10)
    assert got.count.tolist() == [0] and (got.indices == -1).all()


@pytest.mark.parametrize("output_size, seed", [(7, 0), (14, 1)])
def test_numpy_roi_align_on_channels_last_maps_equals_torchvision(output_size: int, seed: int) -> None:
    maps = fpn_maps(2, 8, torch.float32, "cpu", seed)
    boxes = random_boxes(2, 40, seed)
    counts = [40, 25]
    expected = roi_align_reference(maps, boxes, output_size, counts=counts)

    nhwc = [np.ascontiguousarray(m.permute(0, 2, 3, 1).numpy()) for m in maps]
    got = host_ops.multilevel_roi_align_nhwc(nhwc, boxes.numpy(), output_size, SCALES, counts=np.array(counts))

    assert got.shape == (2, 40, 8, output_size, output_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)
    assert (got[1, 25:] == 0).all()


def test_bad_shapes_are_refused_before_the_kernel_runs() -> None:
    with pytest.raises(ValueError, match="boxes must be"):
        host_ops.batched_nms(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32), np.zeros((1, 3), np.int64),
                             0.5, 0.0, 5)
    with pytest.raises(ValueError, match="spatial scales"):
        host_ops.multilevel_roi_align_nhwc([np.zeros((1, 4, 4, 2), np.float32)], np.zeros((1, 1, 4), np.float32), 7,
                                           [0.25, 0.125])
