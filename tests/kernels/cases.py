"""Randomized cases and torchvision references shared by the kernel tests."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_vanilla
from torchvision.ops.poolers import initLevelMapper

from segstream import kernels

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


def roi_align_reference(
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





def nms_case(
    images: int, n: int, classes: int, seed: int, *, quantized: bool = False, tied_scores: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clustered boxes (so that suppression happens), with degenerate, tiny, huge and inverted ones."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(images, max(1, n // 8), 2, generator=g) * 900
    pick = torch.randint(0, centres.shape[1], (images, n), generator=g)
    c = torch.gather(centres, 1, pick[..., None].expand(images, n, 2)) + torch.randn(images, n, 2, generator=g) * 6
    wh = torch.exp(torch.empty(images, n, 2).uniform_(1.0, 5.0, generator=g))
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=-1)
    kind = torch.randint(0, 20, (images, n), generator=g)
    boxes[kind == 0] = boxes[kind == 0][:, [0, 1, 0, 1]]  # zero area: IoU 0/0 never suppresses
    boxes[kind == 1] = boxes[kind == 1][:, [0, 1, 0, 1]] + torch.tensor([0.0, 0.0, 0.2, 0.1])  # tiny
    boxes[kind == 2] = torch.tensor([-100.0, -50.0, 1000.0, 900.0])  # huge, identical
    boxes[kind == 3] = boxes[kind == 3][:, [2, 1, 0, 3]]  # inverted x: negative area
    if quantized:
        boxes = (boxes.clamp(-200, 1000) * 8).round() / 8
    if tied_scores:
        scores = torch.randint(1, 12, (images, n), generator=g).float() / 12
    else:
        scores = torch.rand(images, n, generator=g)
    labels = torch.randint(0, classes, (images, n), generator=g)
    return boxes, scores, labels


def nms_reference(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou: float,
    score_threshold: float,
    k: int,
    counts: list[int] | None = None,
    per_class: bool = True,
) -> list[torch.Tensor]:
    """Kept input rows per image: torchvision on the candidates, canonical order, first k."""
    result = []
    for b in range(boxes.shape[0]):
        valid = boxes.shape[1] if counts is None else counts[b]
        rows = torch.where(scores[b, :valid] > score_threshold)[0]
        run = _batched_nms_vanilla if per_class else torchvision.ops.batched_nms
        keep = rows[run(boxes[b, rows], scores[b, rows], labels[b, rows], iou)]
        s = scores[b, keep]
        by_row = torch.sort(keep, stable=True)
        keep = by_row.values[torch.sort(s[by_row.indices], descending=True, stable=True).indices]
        result.append(keep[:k])
    return result


def assert_nms_matches(got: kernels.NMSResult, boxes, scores, labels, expected: list[torch.Tensor], k: int) -> None:
    images = boxes.shape[0]
    assert got.count.shape == (images,) and got.count.dtype == torch.int32
    assert got.indices.shape == (images, k) and got.indices.dtype == torch.int64
    assert got.boxes.shape == (images, k, 4) and got.boxes.dtype == boxes.dtype
    assert got.scores.shape == (images, k) and got.scores.dtype == scores.dtype
    assert got.classes.shape == (images, k) and got.classes.dtype == torch.int64
    for b, keep in enumerate(expected):
        n = len(keep)
        assert int(got.count[b]) == n, f"image {b}: kept {int(got.count[b])}, torchvision {n}"
        assert torch.equal(got.indices[b, :n], keep.to(got.indices.device)), f"image {b}: keep set or order differs"
        assert torch.equal(got.boxes[b, :n], boxes[b, keep])
        assert torch.equal(got.scores[b, :n], scores[b, keep])
        assert torch.equal(got.classes[b, :n], labels[b, keep].long())
        assert (got.indices[b, n:] == -1).all()
        assert (got.boxes[b, n:] == 0).all() and (got.scores[b, n:] == 0).all() and (got.classes[b, n:] == 0).all()
