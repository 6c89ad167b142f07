"""Masks come out exactly as pycocotools and torchvision would make them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from torchvision.models.detection.roi_heads import paste_masks_in_image

from segstream.pipeline.stages.postprocess import paste_regions
from segstream.pipeline.wire.rle import encode_region
from segstream.pipeline.wire.entries import decode_mask


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


@pytest.mark.parametrize("inputs", ["torch", "numpy"])
@pytest.mark.parametrize("size", [(360, 640), (239, 317), (720, 1280)])
def test_pasted_regions_equal_torchvision_paste_thresholded(size, inputs):
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
    given = (masks, boxes) if inputs == "torch" else (masks.numpy(), boxes.numpy())  # a torch-free engine's
    for i, (region, (x0, y0, x1, y1)) in enumerate(paste_regions(*given, height, width, 0.5)):
        ours = np.zeros((height, width), dtype=bool)
        ours[y0:y1, x0:x1] = region
        assert np.array_equal(ours, reference[i].numpy()), i


@pytest.mark.parametrize("regions", [False, True], ids=["rle-only", "with-regions"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU on this machine"))])
def test_kernel_postprocess_publishes_what_the_cpu_postprocess_publishes(device, regions):
    """The path taken for GPU detections (one paste+RLE kernel, one copy); on the CPU, its C++ build.
    With regions (tracking, drawing) the mask regions are those the CPU pastes."""
    from segstream.engines.protocol import Detections
    from segstream.pipeline.messages import Frame, FrameDetections
    from segstream.pipeline.stages.postprocess import Postprocess

    g = torch.Generator().manual_seed(4)
    items = []
    for index, (height, width, k) in enumerate([(360, 640, 12), (180, 320, 0), (720, 1280, 7)]):
        xy = torch.rand((k, 2), generator=g) * torch.tensor([500.0, 260.0])
        boxes = torch.cat([xy, xy + 10 + torch.rand((k, 2), generator=g) * 200], 1)
        masks = torch.nn.functional.interpolate(torch.rand((k, 1, 6, 6), generator=g), size=(28, 28), mode="bilinear")[:, 0]
        found = Detections(boxes, torch.rand(k, generator=g).sort(descending=True).values,
                           torch.randint(1, 5, (k,), generator=g), masks)
        frame = Frame("s", index, None, 0.0, np.zeros((height, width, 3), dtype=np.uint8))
        items.append(FrameDetections(frame, found, (384 / 720, 640 / 1280) if width == 1280 else (1.0, 1.0)))
    names = ("__background__", "a", "b", "c", "d")
    want = Postprocess(names, 0.5).process(items)
    on_device = [FrameDetections(i.frame, i.detections.to(device), i.scale) for i in items]
    stage = Postprocess(names, 0.5, take=3, regions=regions, device_path=True if device == "cpu" else None)
    assert stage._device_path(on_device[0])
    got = stage.process(on_device)
    assert sum(len(r.instances) for r in want) == 19
    for mine, theirs in zip(got, want, strict=True):
        assert mine.error is None and len(mine.instances) == len(theirs.instances)
        for a, b in zip(mine.instances, theirs.instances):
            assert (a.class_id, a.label, a.score, a.rle) == (b.class_id, b.label, b.score, b.rle)
            assert a.box == pytest.approx(b.box, abs=1e-4)
            if regions:
                assert a.region_box == b.region_box and np.array_equal(a.region, b.region)
            else:
                assert a.region is None


def test_kernel_postprocess_encodes_masks_too_ragged_for_their_row_on_the_cpu():
    from segstream.engines.protocol import Detections
    from segstream.pipeline.messages import Frame, FrameDetections
    from segstream.pipeline.stages.postprocess import Postprocess

    g = torch.Generator().manual_seed(5)
    masks = (torch.rand((3, 28, 28), generator=g) > 0.5).float()  # salt and pepper: thousands of runs
    boxes = torch.tensor([[0.0, 0.0, 300.0, 170.0], [20.0, 30.0, 90.0, 100.0], [5.0, 5.0, 310.0, 175.0]])
    found = Detections(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 2, 3]), masks)
    item = FrameDetections(Frame("s", 0, None, 0.0, np.zeros((180, 320, 3), dtype=np.uint8)), found, (1.0, 1.0))
    names = ("__background__", "a", "b", "c")
    want = Postprocess(names, 0.5).process([item])[0]
    got = Postprocess(names, 0.5, regions=False, device_path=True).process([item])[0]
    assert [i.rle for i in got.instances] == [i.rle for i in want.instances]
    assert got.instances[0].region is not None  # this one did not fit its row and took the CPU path
