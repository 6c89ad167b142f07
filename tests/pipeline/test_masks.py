"""Masks come out exactly as pycocotools and torchvision would make them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from torchvision.models.detection.roi_heads import paste_masks_in_image

from segstream.pipeline.postprocess import paste_regions
from segstream.pipeline.rle import encode_region
from segstream.pipeline.wire import decode_mask


def full_frame(region: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    full = np.zeros((height, width), dtype=np.uint8)
    full[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
    return full


def test_region_rle_is_byte_identical_to_pycocotools_on_every_edge_case():
    rng = np.random.default_rng(7)
    for _ in range(4000):
        height, width = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        h, w = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        region = rng.random((h, w)) < rng.random()
        expected = coco_mask.encode(np.asfortranarray(full_frame(region, x0, y0, height, width)))
        got = encode_region(region, x0, y0, height, width)
        assert got["counts"] == expected["counts"].decode() and got["size"] == [height, width]


def test_region_rle_matches_pycocotools_at_1280x720_and_decodes_back():
    rng = np.random.default_rng(3)
    height, width = 720, 1280
    for _ in range(40):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        yy, xx = np.mgrid[0:h, 0:w]
        region = (yy - h / 2) ** 2 / (h / 2 + 1) ** 2 + (xx - w / 2) ** 2 / (w / 2 + 1) ** 2 < rng.random()
        full = full_frame(region, x0, y0, height, width)
        got = encode_region(region, x0, y0, height, width)
        assert got["counts"] == coco_mask.encode(np.asfortranarray(full))["counts"].decode()
        assert np.array_equal(decode_mask(got), full)


@pytest.mark.parametrize("size", [(360, 640), (239, 317)])
def test_pasted_regions_equal_torchvision_paste_thresholded(size):
    height, width = size
    torch.manual_seed(0)
    k = 25
    masks = torch.rand(k, 28, 28)
    xy = torch.rand(k, 2) * torch.tensor([width * 1.2, height * 1.2]) - 20
    wh = torch.rand(k, 2) * torch.tensor([width / 2, height / 2]) + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    reference = paste_masks_in_image(masks[:, None], boxes, (height, width))[:, 0] > 0.5
    for i, (region, (x0, y0, x1, y1)) in enumerate(paste_regions(masks, boxes, height, width, 0.5)):
        ours = np.zeros((height, width), dtype=bool)
        ours[y0:y1, x0:x1] = region
        assert np.array_equal(ours, reference[i].numpy()), i
