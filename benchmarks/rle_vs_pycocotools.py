"""Box-region COCO RLE vs pycocotools.mask.encode on full frames: 20 instances at 1280x720.

Both encoders get the same instances; pycocotools needs the full-frame Fortran-order masks
(as a user holding pasted masks would pass them), ours only the box regions. Prints the
median time of each over repeated runs, and their ratio, measured in the same run.

    .venv/bin/python benchmarks/rle_vs_pycocotools.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from pycocotools import mask as coco_mask

from segstream.pipeline.wire.rle import encode_region

HEIGHT, WIDTH, INSTANCES, REPEATS = 720, 1280, 20, 30


def instances(rng: np.random.Generator) -> list[tuple[np.ndarray, int, int]]:
    out = []
    for _ in range(INSTANCES):
        h, w = int(rng.integers(40, 300)), int(rng.integers(40, 400))
        y0, x0 = int(rng.integers(0, HEIGHT - h)), int(rng.integers(0, WIDTH - w))
        yy, xx = np.mgrid[0:h, 0:w]
        region = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 < 1.0
        out.append((region, x0, y0))
    return out


def main() -> None:
    rng = np.random.default_rng(0)
    objects = instances(rng)
    full = np.zeros((HEIGHT, WIDTH, INSTANCES), dtype=np.uint8, order="F")
    for i, (region, x0, y0) in enumerate(objects):
        full[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1], i] = region
    ours, theirs = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        got = [encode_region(r, x0, y0, HEIGHT, WIDTH)["counts"] for r, x0, y0 in objects]
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        expected = [e["counts"].decode() for e in coco_mask.encode(full)]
        theirs.append(time.perf_counter() - start)
    assert got == expected, "outputs differ"
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{INSTANCES} instances at {WIDTH}x{HEIGHT}: box-region {a * 1e3:.2f} ms, "
          f"pycocotools {b * 1e3:.2f} ms, speed-up {b / a:.1f}x (byte-identical: yes)")


if __name__ == "__main__":
    main()
