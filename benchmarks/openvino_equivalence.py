"""OpenVINO fp32 against the torch engine on held-out clips, through the whole pipeline.

For each clip: both engines run it (decode, preprocess, engine, postprocess; published instances
with full-frame masks), and every frame's instances are compared in order: same count, same class,
box IoU and mask IoU. Prints one row per clip and every instance below the floors (box IoU 0.99,
mask IoU 0.98) with its frame, class and both scores.

    .venv/bin/python benchmarks/openvino_equivalence.py [--frames 200] [--precision fp32]

The clips are those of docs/model.md's held-out evaluation (seeds 1001 and 2002, never trained on).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pycocotools import mask as mask_utils

from segstream.engines.factory import open_engine
from segstream.engines.models import load_model
from segstream.pipeline.config import parse_config
from segstream.pipeline.run import run
from segstream.pipeline.sinks.collect import CollectSink
from segstream.shapes.clip import render_clip

CLIPS = {"heldout (seed 1001)": dict(seed=1001), "heldout2 (seed 2002, crf 28)": dict(seed=2002, crf=28)}
BOX_FLOOR, MASK_FLOOR = 0.99, 0.98


def published(video: Path, engine) -> list:
    sink = CollectSink()
    config = parse_config({"redis": {"url": None}, "output": {"progress": False}})
    run([str(video)], config, engine=engine, extra_sinks=[sink])
    return sorted(sink.results, key=lambda r: r.frame.index)


def box_iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    model = load_model("shapes")
    torch_engine = open_engine("torch", model, "cpu", 1)
    openvino = open_engine("openvino", model, "cpu", 1, precision=args.precision)
    folder = Path(tempfile.mkdtemp(prefix="segstream-equivalence-"))
    print(f"{'clip':30s} {'frames':>6s} {'same count':>10s} {'instances':>9s} {'same class':>10s} "
          f"{'min box IoU':>11s} {'min mask IoU':>12s} {'below floor':>11s}")
    for name, options in CLIPS.items():
        video = folder / f"{options['seed']}.mp4"
        render_clip(video, folder / f"{options['seed']}.json", frames=args.frames, scene_frames=(15, 30), **options)
        want, got = published(video, torch_engine), published(video, openvino)
        same_count = same_class = instances = 0
        min_box = min_mask = 1.0
        below = []
        for g, w in zip(got, want):
            same_count += len(g.instances) == len(w.instances)
            for mine, theirs in zip(g.instances, w.instances):
                instances += 1
                same_class += mine.class_id == theirs.class_id
                b = box_iou(mine.box, theirs.box)
                m = float(mask_utils.iou([mine.rle], [theirs.rle], [0])[0, 0])
                min_box, min_mask = min(min_box, b), min(min_mask, m)
                if b < BOX_FLOOR or m < MASK_FLOOR:
                    below.append(f"  frame {g.frame.index}: {theirs.label}, score {mine.score:.3f} (torch "
                                 f"{theirs.score:.3f}), box IoU {b:.3f}, mask IoU {m:.3f}")
        print(f"{name:30s} {len(got):6d} {same_count:10d} {instances:9d} {same_class:10d} {min_box:11.5f} "
              f"{min_mask:12.5f} {len(below):11d}")
        for line in below:
            print(line)


if __name__ == "__main__":
    main()
