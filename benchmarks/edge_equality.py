"""The torch-free engine (bundled OpenVINO artifact) against the torch engine on two held-out clips,
and its frames/s against today's OpenVINO engine (torch in between), engine-level, in one run.

Equality, through the whole pipeline (decode, preprocess, engine, paste + RLE): per frame, each
torch instance is paired with an unpaired torch-free instance of its class with the highest mask
IoU; an instance counts as matched at mask IoU >= 0.99, over the larger of the two instance counts.
Mask and box AP (pycocotools, against the clips' ground truth) of both engines, and their difference.

Speed: both engines' `infer` on the same decoded, preprocessed frames of the first clip, alternated
frame by frame (so load from other processes falls on both alike); frames/s of each and the ratio.

    .venv/bin/python benchmarks/edge_equality.py [--frames 150] [--speed-frames 60] [--rounds 3] [--speed-only]

The clips are docs/model.md's held-out ones (seeds 1001 and 2002, photographs never trained on).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from segstream.engines.factory import open_engine
from segstream.engines.models import load_model
from segstream.engines.openvino_artifact import bundled_artifact
from segstream.engines.openvino_runtime import OpenVinoRuntimeEngine
from segstream.pipeline.config import parse_config
from segstream.pipeline.run import run
from segstream.pipeline.sinks.collect import CollectSink
from segstream.pipeline.wire.entries import frame_message
from segstream.shapes.clip import render_clip
from segstream.shapes.evaluate import coco_metrics

CLIPS = {"heldout (seed 1001)": dict(seed=1001), "heldout2 (seed 2002, crf 28)": dict(seed=2002, crf=28)}
MIN_IOU = 0.99


def published(video: Path, engine) -> list:
    sink = CollectSink()
    config = parse_config({"redis": {"url": None}, "output": {"progress": False}})
    run([str(video)], config, engine=engine, extra_sinks=[sink])
    return sorted(sink.results, key=lambda r: r.frame.index)


def matched(got: list, want: list) -> tuple[int, int, float]:
    """(matched instances, the larger side's instance count, lowest mask IoU of a matched pair)."""
    hits = total = 0
    lowest = 1.0
    for g, w in zip(got, want, strict=True):
        total += max(len(g.instances), len(w.instances))
        free = list(g.instances)
        for theirs in w.instances:
            best, best_iou = None, -1.0
            for mine in free:
                if mine.class_id == theirs.class_id:
                    iou = float(mask_utils.iou([mine.rle], [theirs.rle], [0])[0, 0])
                    if iou > best_iou:
                        best, best_iou = mine, iou
            if best is not None and best_iou >= MIN_IOU:
                hits += 1
                lowest = min(lowest, best_iou)
                free.remove(best)
    return hits, total, lowest


def batches(video: Path, config, count: int) -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
    """`count` network inputs (float32 [1,3,H,W] numpy, image sizes) of the clip's frames, made by the pipeline's Preprocess."""
    from segstream.pipeline.messages import Frame
    from segstream.pipeline.stages.preprocess import Preprocess
    from segstream.shapes.evaluate import decode_frames

    prep = Preprocess(config, "cpu", 1, host_arrays=True)
    out = []
    for index, image in enumerate(decode_frames(video, count)):
        batch = prep.batch([Frame("speed", index, None, time.time(), image)])
        out.append((np.asarray(batch.images), list(batch.image_sizes)))
    return out


def alternated(engines: list, inputs: list[list], rounds: int) -> list[float]:
    """Frames/s of each engine on its inputs, the engines taking turns frame by frame (so load from
    other processes falls on all of them alike)."""
    busy = [0.0] * len(engines)
    for _ in range(rounds):
        for frame in range(len(inputs[0])):
            for i, engine in enumerate(engines):
                images, sizes = inputs[i][frame]
                start = time.perf_counter()
                engine.infer(images, sizes)
                busy[i] += time.perf_counter() - start
    return [rounds * len(inputs[0]) / b for b in busy]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--speed-frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed-only", action="store_true", help="skip the equality part")
    args = parser.parse_args()
    model = load_model("shapes")
    torch_engine = open_engine("torch", model, "cpu", 1)
    runtime = OpenVinoRuntimeEngine(bundled_artifact("shapes"))
    folder = Path(tempfile.mkdtemp(prefix="segstream-edge-equality-"))
    print(f"{'clip':30s} {'frames':>6s} {'instances':>9s} {'matched':>8s} {'share':>8s} {'min IoU':>8s} "
          f"{'mask AP torch':>13s} {'mask AP edge':>12s} {'diff':>7s} {'box AP diff':>11s}")
    videos = []
    for name, options in CLIPS.items():
        video, gt = folder / f"{options['seed']}.mp4", folder / f"{options['seed']}.json"
        render_clip(video, gt, frames=args.frames, scene_frames=(15, 30), **options)
        videos.append(video)
        if args.speed_only:
            continue
        want, got = published(video, torch_engine), published(video, runtime)
        hits, total, lowest = matched(got, want)
        ap_want, ap_got = (coco_metrics(gt, [frame_message(r, 0) for r in results]) for results in (want, got))
        print(f"{name:30s} {len(got):6d} {total:9d} {hits:8d} {hits / max(total, 1):8.2%} {lowest:8.4f} "
              f"{ap_want['mask_ap']:13.4f} {ap_got['mask_ap']:12.4f} {ap_got['mask_ap'] - ap_want['mask_ap']:+7.4f} "
              f"{ap_got['box_ap'] - ap_want['box_ap']:+11.4f}")

    openvino = open_engine("openvino", model, "cpu", 1)
    import torch

    inputs = batches(videos[0], model.config, args.speed_frames)
    tensors = [(torch.from_numpy(images), sizes) for images, sizes in inputs]  # today's engine takes tensors
    alternated([runtime, openvino], [inputs[:5], tensors[:5]], 1)  # warm-up: first calls allocate
    edge, today = alternated([runtime, openvino], [inputs, tensors], args.rounds)
    print(f"\nengine-level infer, {len(inputs)} frames x {args.rounds} rounds, batch 1, "
          f"{runtime.threads} OpenVINO thread(s) each:")
    print(f"  torch-free ({runtime.name}): {edge:.2f} frames/s")
    print(f"  today's    ({openvino.name}): {today:.2f} frames/s")
    print(f"  ratio torch-free / today: {edge / today:.2f}")


if __name__ == "__main__":
    main()
