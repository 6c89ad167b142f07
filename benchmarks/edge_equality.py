"""The torch-free engine (bundled OpenVINO artifact) against the torch engine on two held-out clips,
and its frames/s against today's OpenVINO engine (torch in between), engine-level, in one run.

Equality, through the whole pipeline (decode, preprocess, engine, paste + RLE): per frame, each
torch instance is paired with an unpaired torch-free instance of its class with the highest mask
IoU; an instance counts as matched at mask IoU >= 0.99, over the larger of the two instance counts.
Mask and box AP (pycocotools, against the clips' ground truth) of both engines, and their difference.

Speed: both engines' `infer` on the same decoded, preprocessed frames of the first clip, alternated
in rounds (so load from other processes falls on both alike); frames/s of each and the ratio.

    .venv/bin/python benchmarks/edge_equality.py [--frames 150] [--speed-frames 60] [--rounds 3]

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
from segstream.shapes.clip import render_clip
from segstream.shapes.evaluate import coco_metrics

CLIPS = {"heldout (seed 1001)": dict(seed=1001), "heldout2 (seed 2002, crf 28)": dict(seed=2002, crf=28)}
MIN_IOU = 0.99


def published(video: Path, engine) -> list:
    sink = CollectSink()
    config = parse_config({"redis": {"url": None}, "output": {"progress": False}})
    run([str(video)], config, engine=engine, extra_sinks=[sink], handle_signals=False)
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
    """`count` preprocessed network inputs (float32 [1,3,H,W], image sizes) of the clip's frames, as the pipeline makes them."""
    from segstream.pipeline.preprocess import Preprocess
    from segstream.pipeline.sources import VideoFileSource

    prep = Preprocess(config, "cpu", 1)
    out = []
    source = VideoFileSource(str(video), "speed", count, 1)
    for frame in source.frames():
        batch = prep.process([frame])
        out.append((np.asarray(batch.images), list(batch.image_sizes)))
        if len(out) == count:
            break
    return out


def frames_per_second(engine, inputs, rounds: int) -> list[float]:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for images, sizes in inputs:
            engine.infer(images, sizes)
        rates.append(len(inputs) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--speed-frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
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
        want, got = published(video, torch_engine), published(video, runtime)
        hits, total, lowest = matched(got, want)
        ap_want, ap_got = coco_metrics(gt, want), coco_metrics(gt, got)
        print(f"{name:30s} {len(got):6d} {total:9d} {hits:8d} {hits / max(total, 1):8.2%} {lowest:8.4f} "
              f"{ap_want['mask_AP']:13.4f} {ap_got['mask_AP']:12.4f} {ap_got['mask_AP'] - ap_want['mask_AP']:+7.4f} "
              f"{ap_got['box_AP'] - ap_want['box_AP']:+11.4f}")

    openvino = open_engine("openvino", model, "cpu", 1)
    inputs = batches(videos[0], model.config, args.speed_frames)
    for engine in (runtime, openvino):  # warm-up: first calls allocate
        frames_per_second(engine, inputs[:5], 1)
    edge, today = [], []
    for _ in range(args.rounds):  # alternated, so other load falls on both
        edge += frames_per_second(runtime, inputs, 1)
        today += frames_per_second(openvino, inputs, 1)
    print(f"\nengine-level infer, {len(inputs)} frames x {args.rounds} rounds, batch 1, "
          f"{runtime.threads} OpenVINO thread(s) each:")
    print(f"  torch-free ({runtime.name}): {np.median(edge):.2f} frames/s (median of rounds)")
    print(f"  today's    ({openvino.name}): {np.median(today):.2f} frames/s")
    print(f"  ratio torch-free / today: {np.median(edge) / np.median(today):.2f}")


if __name__ == "__main__":
    main()
