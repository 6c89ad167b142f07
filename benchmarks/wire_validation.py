"""What validating an entry costs a consumer: `parse_entry` (JSON + schema-v1 models + mask counts)
against `json.loads` alone, and `decode_mask` against pycocotools' decoder, on frames shaped like the
pipeline's output (ellipse masks, COCO RLE from pycocotools.encode).

    .venv/bin/python benchmarks/wire_validation.py [--instances 10] [--repeat 200]

Prints per-frame times and their ratios from one run, at 640x360 and 1920x1080.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import numpy as np
from pycocotools import mask as coco_mask

from segstream.pipeline.wire.schema import parse_entry
from segstream.pipeline.wire.entries import decode_mask


def frame_fields(width: int, height: int, instances: int, seed: int = 0) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    found = []
    for i in range(instances):
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        rx, ry = rng.uniform(0.03, 0.15) * width, rng.uniform(0.03, 0.15) * height
        mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8)
        rle = coco_mask.encode(np.asfortranarray(mask))
        found.append({"class_id": 1 + i % 3, "label": "shape", "score": 0.9, "track_id": i,
                      "box": [cx - rx, cy - ry, cx + rx, cy + ry],
                      "mask": {"size": [height, width], "counts": rle["counts"].decode("ascii")}})
    message = {"schema": 1, "stream": "cam", "frame": 7, "pts": 0.28, "time": time.time(), "width": width,
               "height": height, "dropped": 0, "latency": 0.05, "instances": found}
    return {"data": json.dumps(message, separators=(",", ":"))}


def per_call(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {args.instances} instances per frame")
    for width, height in ((640, 360), (1920, 1080)):
        fields = frame_fields(width, height, args.instances)
        loads = per_call(lambda: json.loads(fields["data"]), args.repeat)
        validated = per_call(lambda: parse_entry(fields), args.repeat)
        instances = json.loads(fields["data"])["instances"]
        ours = per_call(lambda: [decode_mask(i["mask"]) for i in instances], max(1, args.repeat // 10))
        theirs = per_call(lambda: [coco_mask.decode({"size": i["mask"]["size"], "counts": i["mask"]["counts"].encode()})
                                   for i in instances], max(1, args.repeat // 10))
        print(f"{width}x{height}: data {len(fields['data'])} B; json.loads {loads * 1e6:.0f} us, parse_entry "
              f"{validated * 1e6:.0f} us per frame ({validated / loads:.1f}x json.loads alone); decode_mask "
              f"{ours * 1e3 / len(instances):.2f} ms vs pycocotools {theirs * 1e3 / len(instances):.2f} ms per mask "
              f"({ours / theirs:.2f}x)")


if __name__ == "__main__":
    main()
