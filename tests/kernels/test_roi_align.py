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

CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine: CUDA build not run")),
]
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
IMAGE_HW = (256, 320)


def fpn_maps(images: int, channels: int, dtype: torch.dtype, device: str, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE_HW
    return [
        torch.rand(images, channels, int(h * s), int(w * s), generator=g).to(dtype=dtype, device=device)
        for s in SCALES
    ]


def random_boxes(images: int, rois: int, seed: int) -> torch.Tensor:
    """Boxes of every kind: all FPN levels, degenerate, tiny, huge, outside the image, inverted."""
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE_HW
    n = images * rois
    side = torch.exp(torch.empty(n).uniform_(2.0, 7.5, generator=g))  # 7 .. 1800 px: levels 2..5
    aspect = torch.exp(torch.empty(n).uniform_(-1.0, 1.0, generator=g))
    bw, bh = side * aspect.sqrt(), side / aspect.sqrt()
    cx = torch.empty(n).uniform_(-0.2 * w, 1.2 * w, generator=g)
    cy = torch.empty(n).uniform_(-0.2 * h, 1.2 * h, generator=g)
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
    kind = torch.randint(0, 10, (n,), generator=g)
    boxes[kind == 0, 2] = boxes[kind == 0, 0]  # zero width
    boxes[kind == 1, 2:] = boxes[kind == 1, :2] + 0.3  # tiny
    boxes[kind == 2] = torch.tensor([-500.0, -400.0, 4000.0, 3000.0])  # huge
    boxes[kind == 3] = boxes[kind == 3] + torch.tensor([2 * w, 2 * h, 2 * w, 2 * h])  # far outside
    boxes[kind == 4] = boxes[kind == 4][:, [2, 1, 0, 3]]  # x inverted: NaN area, no level
    boxes[kind == 5] = boxes[kind == 5][:, [2, 3, 0, 1]]  # both inverted: positive area
    return boxes.reshape(images, rois, 4)


def reference(
    features: list[torch.Tensor],
    boxes: torch.Tensor,
    output_size: int,
    sampling_ratio: int = 2,
    aligned: bool = False,
    counts: list[int] | None = None,
) -> torch.Tensor:
    """torchvision's level mapper and roi_align per level, in float32, as [B, R, C, P, P]."""
    images, rois = boxes.shape[:2]
    channels = features[0].shape[1]
    feats = [f.float() for f in features]
    out = torch.zeros(images, rois, channels, output_size, output_size, device=boxes.device)
    k_min, k_max = 2, 5
    mapper = initLevelMapper(k_min, k_max)
    for b in range(images):
        valid = rois if counts is None else counts[b]
        if valid == 0:
            continue
        bx = boxes[b, :valid].float()
        levels = mapper([bx]) if len(feats) > 1 else torch.zeros(valid, dtype=torch.int64, device=bx.device)
        for level, (f, scale) in enumerate(zip(feats, SCALES)):
            idx = torch.where(levels == level)[0]
            if idx.numel() == 0:
                continue
            rois_l = torch.cat([torch.full((idx.numel(), 1), float(b), device=bx.device), bx[idx]], dim=1)
            out[b, idx] = torchvision.ops.roi_align(f, rois_l, output_size, scale, sampling_ratio, aligned)
    return out


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

    torch.testing.assert_close(got, reference(feats, boxes, 7, sampling_ratio, aligned), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_size", [7, 14])
def test_float16(device: str, output_size: int) -> None:
    feats = fpn_maps(2, 8, torch.float16, device, 3)
    boxes = random_boxes(2, 200, 4).to(device)

    got = kernels.multilevel_roi_align(feats, boxes, output_size, SCALES)

    assert got.dtype == torch.float16
    # Reference: torchvision in float32 on the same float16 values.
    torch.testing.assert_close(got.float(), reference(feats, boxes, output_size), atol=1e-2, rtol=0)


def boundary_boxes() -> torch.Tensor:
    """Square and oblong boxes whose sqrt(area) walks float by float across 112, 224 and 448 px
    (level boundaries 3|4, 4|5 and the clamp to 5), at integer and fractional positions."""
    rows = []
    for edge in (56.0, 112.0, 224.0, 448.0, 896.0):
        centre = torch.tensor(edge, dtype=torch.float32)
        side = centre
        for _ in range(40):
            side = torch.nextafter(side, torch.tensor(0.0))
        for _ in range(80):
            s = float(side)
            rows.append([0.0, 0.0, s, s])
            rows.append([10.25, 3.5, 10.25 + s, 3.5 + s])
            rows.append([0.0, 0.0, 2 * s, s / 2])
            side = torch.nextafter(side, torch.tensor(1e9))
        for rel in torch.linspace(-3e-6, 3e-6, 61):
            s = edge * (1 + float(rel))
            rows.append([1.0, 2.0, 1.0 + s, 2.0 + s])
    return torch.tensor(rows, dtype=torch.float32)


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

    torch.testing.assert_close(got, reference(feats, boxes, 7), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_padding_rows_are_zero(device: str) -> None:
    feats = fpn_maps(3, 4, torch.float32, device, 5)
    boxes = random_boxes(3, 50, 6).to(device)
    counts = [50, 17, 0]

    got = kernels.multilevel_roi_align(
        feats, boxes, 7, SCALES, counts=torch.tensor(counts, dtype=torch.int32, device=device)
    )

    torch.testing.assert_close(got, reference(feats, boxes, 7, counts=counts), atol=1e-5, rtol=0)
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
