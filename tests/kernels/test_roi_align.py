"""segstream.kernels.multilevel_roi_align against torchvision's MultiScaleRoIAlign / roi_align.

Every case runs on the CPU build; the same cases run on the CUDA build when a GPU is present.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops.poolers import initLevelMapper

from segstream import kernels
from segstream.kernels import host_build

from cases import DEVICES, IMAGE_HW, SCALES, boundary_boxes, fpn_maps, random_boxes, roi_align_reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_size", [7, 14])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_multiscale_roi_align(device: str, output_size: int, seed: int) -> None:
    feats = fpn_maps(2, 16, torch.float32, device, seed)
    boxes = random_boxes(2, 300, seed + 100).to(device)
    pooler = torchvision.ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size, 2)
    expected = pooler(
        OrderedDict(zip(["p2", "p3", "p4", "p5"], feats)), list(boxes), [IMAGE_HW] * 2
    ).reshape(2, 300, 16, output_size, output_size)

    got = kernels.multilevel_roi_align(feats, boxes, output_size, SCALES)

    assert got.shape == expected.shape and got.dtype == torch.float32 and got.device == boxes.device
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling_ratio,aligned", [(0, False), (1, True), (3, False), (2, True), (0, True)])
def test_sampling_ratio_and_aligned(device: str, sampling_ratio: int, aligned: bool) -> None:
    feats = fpn_maps(1, 4, torch.float32, device, 7)
    boxes = random_boxes(1, 200, 8).to(device)
    # Adaptive sampling of a huge box is slow in both implementations and adds nothing here.
    boxes = boxes.clamp(-600, 1200)

    got = kernels.multilevel_roi_align(feats, boxes, 7, SCALES, sampling_ratio=sampling_ratio, aligned=aligned)

    torch.testing.assert_close(got, roi_align_reference(feats, boxes, 7, sampling_ratio, aligned), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_size", [7, 14])
def test_float16(device: str, output_size: int) -> None:
    feats = fpn_maps(2, 8, torch.float16, device, 3)
    boxes = random_boxes(2, 200, 4).to(device)

    got = kernels.multilevel_roi_align(feats, boxes, output_size, SCALES)

    assert got.dtype == torch.float16
    # Reference: torchvision in float32 on the same float16 values.
    torch.testing.assert_close(got.float(), roi_align_reference(feats, boxes, output_size), atol=1e-2, rtol=0)


def test_level_rule_at_boundaries_cpu() -> None:
    boxes = boundary_boxes()
    expected = initLevelMapper(2, 5)([boxes]).to(torch.int32)
    got = torch.empty(len(boxes), dtype=torch.int32)
    host_build.library().segstream_roi_levels(
        boxes.data_ptr(), len(boxes), 4, 2, 5, ctypes.c_float(224.0), ctypes.c_float(4.0), got.data_ptr()
    )
    assert (expected != got).sum() == 0, "level differs from torchvision's LevelMapper"
    assert set(expected.tolist()) == {0, 1, 2, 3}, "the sweep must cross every boundary"


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_at_level_boundaries(device: str) -> None:
    # Maps of very different content per level: a box pooled from the wrong level cannot pass.
    feats = [m + 10 * i for i, m in enumerate(fpn_maps(1, 2, torch.float32, device, 11))]
    boxes = (boundary_boxes() + torch.tensor([20.0, 20.0, 20.0, 20.0]))[None].to(device)

    got = kernels.multilevel_roi_align(feats, boxes, 7, SCALES)

    torch.testing.assert_close(got, roi_align_reference(feats, boxes, 7), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_padding_rows_are_zero(device: str) -> None:
    feats = fpn_maps(3, 4, torch.float32, device, 5)
    boxes = random_boxes(3, 50, 6).to(device)
    counts = [50, 17, 0]

    got = kernels.multilevel_roi_align(
        feats, boxes, 7, SCALES, counts=torch.tensor(counts, dtype=torch.int32, device=device)
    )

    torch.testing.assert_close(got, roi_align_reference(feats, boxes, 7, counts=counts), atol=1e-5, rtol=0)
    assert got[1, 17:].abs().sum() == 0 and got[2].abs().sum() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_single_map_takes_every_box(device: str) -> None:
    feats = fpn_maps(1, 4, torch.float32, device, 9)[:1]
    boxes = random_boxes(1, 100, 10).to(device)
    pooler = torchvision.ops.MultiScaleRoIAlign(["p2"], 7, 2)
    expected = pooler({"p2": feats[0]}, list(boxes), [IMAGE_HW])[None]

    got = kernels.multilevel_roi_align(feats, boxes, 7, SCALES[:1])

    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device: str) -> None:
    feats = fpn_maps(2, 4, torch.float32, device, 1)
    assert kernels.multilevel_roi_align(feats, torch.zeros(2, 0, 4, device=device), 7, SCALES).shape == (2, 0, 4, 7, 7)
    no_images = [f[:0] for f in feats]
    assert kernels.multilevel_roi_align(no_images, torch.zeros(0, 5, 4, device=device), 7, SCALES).shape == (0, 5, 4, 7, 7)


def test_rejects_mismatched_inputs() -> None:
    feats = fpn_maps(1, 4, torch.float32, "cpu", 1)
    boxes = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match="spatial scales"):
        kernels.multilevel_roi_align(feats, boxes, 7, SCALES[:3])
    with pytest.raises(ValueError, match="dtype and device"):
        kernels.multilevel_roi_align([feats[0], feats[1].half()], boxes, 7, SCALES[:2])
    with pytest.raises(ValueError, match="boxes must be"):
        kernels.multilevel_roi_align(feats, torch.zeros(2, 3, 4), 7, SCALES)
    with pytest.raises(TypeError, match="float32 or float16"):
        kernels.multilevel_roi_align([f.double() for f in feats], boxes, 7, SCALES)


def test_half_conversion_matches_torch() -> None:
    lib = host_build.library()
    every_half = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16)
    as_float = torch.empty(1 << 16, dtype=torch.float32)
    lib.segstream_half_to_float(every_half.data_ptr(), as_float.data_ptr(), 1 << 16)
    expected = every_half.float()
    assert torch.equal(as_float.isnan(), expected.isnan())
    assert torch.equal(as_float[~expected.isnan()], expected[~expected.isnan()])

    g = torch.Generator().manual_seed(0)
    values = torch.cat([
        torch.randn(200_000, generator=g) * torch.exp(torch.empty(200_000).uniform_(-20, 12, generator=g)),
        expected[~expected.isnan()],  # every half exactly
        (expected[~expected.isnan()].double() + 2.0**-30).float(),  # just above each half: ties and near-ties
        torch.tensor([65504.0, 65519.99, 65520.0, 1e6, -1e6, 2.0**-25, 2.0**-24 * 1.5, float("inf"), float("-inf")]),
    ])
    halves = torch.empty(len(values), dtype=torch.float16)
    lib.segstream_half_from_float(values.data_ptr(), halves.data_ptr(), len(values))
    assert torch.equal(halves.view(torch.int16), values.half().view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("sampling_ratio,aligned", [(2, False), (0, True)])
def test_channels_last_maps_pool_to_the_same_bits_as_nchw_ones_on_the_cpu(dtype, sampling_ratio, aligned) -> None:
    # The OpenVINO engine hands its FPN maps over channels-last; the CPU kernel pools them in place.
    feats = fpn_maps(2, 24, dtype, "cpu", 11)
    boxes = random_boxes(2, 150, 12).clamp(-600, 1200)
    counts = torch.tensor([150, 90], dtype=torch.int32)
    channels_last = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    assert not channels_last[0].is_contiguous()

    nchw = kernels.multilevel_roi_align(feats, boxes, 14, SCALES, sampling_ratio, aligned, counts=counts)
    nhwc = kernels.multilevel_roi_align(channels_last, boxes, 14, SCALES, sampling_ratio, aligned, counts=counts)

    assert torch.equal(nhwc, nchw)
    assert nhwc[1, 90:].abs().sum() == 0 and nhwc[0].abs().sum() > 0
