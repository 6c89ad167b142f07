"""--engine onnxruntime against --engine torch on the CPU: same instances? how fast?

    .venv/bin/python benchmarks/onnx_vs_torch.py [--model shapes] [--input-size 384x640] [--batch 1]
        [--frames 12] [--repeats 10] [--score-threshold T] [--clip-seed 901]

1. Equivalence: a held-out shapes clip (segstream.shapes.clip, held-out photographs) goes through
   the whole pipeline twice, once per engine; per frame, the published instances are compared:
   count, class, box IoU and mask IoU (full-frame RLE) of each instance with its counterpart.
2. Speed: the same preprocessed batches go through `engine.infer` of both engines, alternating
   engine by engine so that load from other processes hits both alike; the median per batch and
   the ratio torch / onnxruntime are from this one run.

Prints Markdown tables. --score-threshold lowers the model's threshold (an untrained placeholder
model finds nothing at 0.5, which would leave the mask head idle in eager torch but not in the
fixed-K static graph).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from pycocotools import mask as mask_utils

from segstream.engines.models import apply_test_thresholds, load_model
from segstream.engines.onnxruntime_engine import OnnxRuntimeEngine
from segstream.engines.torch_engine import TorchEngine
from segstream.pipeline.config import parse_config
from segstream.pipeline.run import run
from segstream.pipeline.sinks.collect import CollectSink
from worker_thread import on_worker_thread


def _publish(clip: Path, engine, batch: int) -> list:
    sink = CollectSink()
    config = parse_config({"redis": {"url": None}, "engine": {"batch_size": batch}, "output": {"progress": False}})
    run([str(clip)], config, engine=engine, extra_sinks=[sink])
    return sorted(sink.results, key=lambda r: r.frame.index)


def _box_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 1.0


def compare(torch_results: list, ort_results: list) -> dict:
    frames = same_count = instances = 0
    class_mismatch = 0
    box_ious, mask_ious = [], []
    for t, o in zip(torch_results, ort_results):
        frames += 1
        same_count += len(t.instances) == len(o.instances)
        for a, b in zip(t.instances, o.instances):
            instances += 1
            class_mismatch += a.class_id != b.class_id
            box_ious.append(_box_iou(a.box, b.box))
            if mask_utils.area(a.rle) or mask_utils.area(b.rle):
                mask_ious.append(float(mask_utils.iou([a.rle], [b.rle], [0])[0, 0]))
    return {
        "frames": frames, "frames with equal count": same_count, "instances": instances,
        "class mismatches": class_mismatch,
        "min box IoU": min(box_ious, default=1.0), "min mask IoU": min(mask_ious, default=1.0),
        "mean mask IoU": statistics.fmean(mask_ious) if mask_ious else 1.0,
    }


def alternated_times(engines: dict, images: torch.Tensor, sizes: list, repeats: int) -> dict[str, list[float]]:
    """Seconds per `infer` call of each engine, engines alternated call by call (same load for all)."""
    for engine in engines.values():
        engine.infer(images, sizes)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.infer(images, sizes)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--input-size", help="HxW (default: the model's)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=12, help="frames of the held-out clip")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per engine")
    parser.add_argument("--score-threshold", type=float)
    parser.add_argument("--clip-seed", type=int, default=901)
    args = parser.parse_args(argv)

    size = tuple(int(v) for v in args.input_size.split("x")) if args.input_size else None
    model = load_model(args.model, input_size=size)
    if args.score_threshold is not None:
        model.config = model.config.replace(score_threshold=args.score_threshold)
        apply_test_thresholds(model.network, model.config)
    h, w = model.config.input_size
    print(f"model {args.model} ({model.source}), input {h}x{w}, batch {args.batch}, "
          f"score threshold {model.config.score_threshold}, K {model.config.max_detections}, "
          f"torch threads {torch.get_num_threads()}")

    started = time.perf_counter()
    ort = OnnxRuntimeEngine(model, "cpu", args.batch)
    print(f"onnxruntime engine ready in {time.perf_counter() - started:.1f} s ({ort.onnx_path.name})")
    eager = TorchEngine(model, "cpu", args.batch)

    from segstream.shapes.clip import render_clip

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "heldout.mp4"
        render_clip(clip, Path(tmp) / "heldout.json", seed=args.clip_seed, frames=args.frames, size=(640, 360))
        torch_results = _publish(clip, eager, args.batch)
        ort_results = _publish(clip, ort, args.batch)
    stats = compare(torch_results, ort_results)
    print("\n| equivalence on a held-out clip | value |\n|---|---|")
    for key, value in stats.items():
        print(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")

    # Speed: identical inputs, engines alternated call by call.
    images = torch.randn((args.batch, 3, h, w)) * 0.5
    sizes = [(h, w)] * args.batch
    times = on_worker_thread(lambda: alternated_times({"torch": eager, "onnxruntime": ort}, images, sizes, args.repeats))
    t_ms = statistics.median(times["torch"]) * 1000
    o_ms = statistics.median(times["onnxruntime"]) * 1000
    print("\n| engine (CPU) | median ms / batch | frames/s |\n|---|---|---|")
    for name, ms in (("torch (eager torchvision)", t_ms), ("onnxruntime (static graph)", o_ms)):
        print(f"| {name} | {ms:.1f} | {args.batch * 1000 / ms:.2f} |")
    print(f"\nspeed ratio torch / onnxruntime: {t_ms / o_ms:.2f}x")
    ok = stats["frames with equal count"] == stats["frames"] and stats["min box IoU"] >= 0.99 and stats["min mask IoU"] >= 0.98
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
