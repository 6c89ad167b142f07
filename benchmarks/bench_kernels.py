"""Micro-benchmark of segstream.kernels against torchvision at Mask R-CNN sizes.

Multi-level RoIAlign: 1000 boxes over P2..P5 of an 800x1344 input (256 channels), 7x7 (box head)
and 14x14 (mask head), sampling_ratio 2, against ``torchvision.ops.MultiScaleRoIAlign``.
Batched NMS: 4000 boxes over 80 classes, IoU 0.5, score threshold 0.05, first K (100, and 4000
= all), against ``torchvision.ops.batched_nms`` plus the threshold and cut that our op includes.

Runs on the CPU, and on CUDA when a GPU is present. Prints one Markdown table; each ratio is
torchvision's median time over ours from the same run.

    python benchmarks/bench_kernels.py [--repeats N] [--devices cpu,cuda] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
import torchvision

from segstream import kernels

IMAGE_HW = (800, 1344)
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
NAMES = ["p2", "p3", "p4", "p5"]


def timed(fn: Callable[[], object], device: str, repeats: int, warmup: int) -> float:
    """Median seconds per call; on CUDA measured with events around each call."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def roi_case(device: str, dtype: torch.dtype, output_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE_HW
    feats = [torch.rand(1, 256, int(h * s), int(w * s), generator=g).to(device=device, dtype=dtype) for s in SCALES]
    # Proposal-like boxes: sides 16..800 px, log-uniform, inside the image.
    side = torch.exp(torch.empty(1000, 2).uniform_(2.77, 6.68, generator=g))
    x1 = torch.rand(1000, generator=g) * (w - side[:, 0])
    y1 = torch.rand(1000, generator=g) * (h - side[:, 1])
    boxes = torch.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], dim=1)[None].to(device)
    pooler = torchvision.ops.MultiScaleRoIAlign(NAMES, output_size, 2)

    def ours():
        return kernels.multilevel_roi_align(feats, boxes, output_size, SCALES)

    def theirs():
        return pooler(OrderedDict(zip(NAMES, feats)), [boxes[0]], [IMAGE_HW])

    return ours, theirs


def nms_case(device: str, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(400, 2, generator=g) * torch.tensor([1344.0, 800.0])
    c = centres[torch.randint(0, 400, (4000,), generator=g)] + torch.randn(4000, 2, generator=g) * 8
    wh = torch.exp(torch.empty(4000, 2).uniform_(3.0, 6.0, generator=g))
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1).to(device)
    scores = torch.rand(4000, generator=g).to(device)
    labels = torch.randint(0, 80, (4000,), generator=g).to(device)

    def ours():
        return kernels.batched_nms(boxes[None], scores[None], labels[None], 0.5, 0.05, k)

    def theirs():
        keep = torch.where(scores > 0.05)[0]
        kept = torchvision.ops.batched_nms(boxes[keep], scores[keep], labels[keep], 0.5)
        return keep[kept[:k]]

    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    devices = [d for d in args.devices.split(",") if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CPU threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    print()
    print("| case | device | torchvision ms | segstream ms | ratio (torchvision / segstream) |")
    print("|---|---|---:|---:|---:|")
    for device in devices:
        if dtype == torch.float16 and device == "cpu":
            cases = []  # torchvision's CPU roi_align in float16 is not a meaningful baseline
        else:
            cases = [(f"RoIAlign 1000x4 levels x256 {s}x{s} {args.dtype}", *roi_case(device, dtype, s)) for s in (7, 14)]
        # K=100 is Mask R-CNN's detections per image; K=4000 keeps everything (no early stop).
        for k in (100, 4000):
            cases.append((f"batched NMS 4000 boxes x80 classes, K={k}", *nms_case(device, k)))
        for name, ours, theirs in cases:
            warmup = 1 if device == "cpu" else 3
            t_theirs = timed(theirs, device, args.repeats, warmup)
            t_ours = timed(ours, device, args.repeats, warmup)
            print(f"| {name} | {device} | {t_theirs * 1e3:.2f} | {t_ours * 1e3:.2f} | {t_theirs / t_ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
