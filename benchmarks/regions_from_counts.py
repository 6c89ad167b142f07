"""Mask regions on the GPU path: rebuilt from the kernel's counts vs pasted again on the CPU.

With detections on a GPU the paste+RLE kernel sends back only COCO counts; the tracker and the
drawing sinks still need each mask's box region. This compares, for the same 50 instances of
40-240 px in a 1280x720 frame, rebuilding the regions from the counts (`region_from_counts`)
with what the CPU path does (`paste_regions` + `encode_region`). The counts come from the
kernel's C++ build (the CUDA build gives the same counts). Prints medians and their ratio,
measured in the same run, one thread.

    .venv/bin/python benchmarks/regions_from_counts.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from segstream.kernels.mask_rle import default_cap, mask_rle_counts
from segstream.pipeline.stages.postprocess import paste_regions
from segstream.pipeline.wire.rle import encode_region, region_from_counts

HEIGHT, WIDTH, INSTANCES, REPEATS = 720, 1280, 50, 30


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand((INSTANCES, 1, 5, 5), generator=g)
    masks = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    xy = torch.rand((INSTANCES, 2), generator=g) * torch.tensor([1000.0, 500.0])
    boxes = torch.cat([xy, xy + 40 + torch.rand((INSTANCES, 2), generator=g) * 200], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, WIDTH)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, HEIGHT)
    found = mask_rle_counts(masks, boxes, torch.tensor([[HEIGHT, WIDTH]] * INSTANCES), 0.5, default_cap(WIDTH))
    counts, num, regions = found.counts.numpy(), found.num.numpy(), [tuple(r) for r in found.regions.tolist()]

    def pasted() -> list[np.ndarray]:
        out = []
        for region, (x0, y0, _, _) in paste_regions(masks, boxes, HEIGHT, WIDTH, 0.5):
            encode_region(region, x0, y0, HEIGHT, WIDTH)
            out.append(region)
        return out

    def rebuilt() -> list[np.ndarray]:
        return [region_from_counts(counts[i, : num[i]], regions[i], HEIGHT) for i in range(INSTANCES)]

    assert all(np.array_equal(a, b) for a, b in zip(pasted(), rebuilt()))
    times: dict[str, list[float]] = {"paste + encode (CPU path)": [], "rebuild from counts": []}
    for _ in range(REPEATS):  # interleaved, so drift on a shared machine hits both alike
        for name, step in zip(times, (pasted, rebuilt)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    area = sum(r.size for r in rebuilt())
    print(f"{INSTANCES} instances, {area} region pixels in a {WIDTH}x{HEIGHT} frame, {REPEATS} rounds")
    for name, ms in medians.items():
        print(f"  {name:28s} {ms:7.2f} ms")
    print(f"  ratio (paste / rebuild)      {medians['paste + encode (CPU path)'] / medians['rebuild from counts']:7.2f}x")


if __name__ == "__main__":
    main()
