"""Frames/s of the compact shapes model vs torchvision's maskrcnn_resnet50_fpn, in one run.

    .venv/bin/python benchmarks/model_speed.py [--frames 30] [--model CHECKPOINT]

Both models get the same 640x360 frames of a rendered shapes clip, one frame per call, through
their own torchvision transform (resize to fit the input size, normalise, pad), backbone, RPN,
RoI heads and mask pasting at frame resolution. The reference runs at the same input size
(min_size 360, max_size 640: the frame is not rescaled) with random weights (weights=None,
weights_backbone=None), its score threshold and detection cap set to the compact model's.
Random weights make the reference's detection count arbitrary (often the cap), which inflates
its mask-head and pasting time, so the backbone-only ratio (feature extraction of one padded
input, no heads) is printed as well: the end-to-end ratio lies between the two in fairness.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from segstream.shapes.clip import render_clip
from segstream.shapes.evaluate import decode_frames
from segstream.shapes.model import SHAPES_CHECKPOINT, load_shapes_model
from worker_thread import on_worker_thread


@torch.inference_mode()
def interleaved_fps(models: list[torch.nn.Module], frames: list[torch.Tensor], warmup: int = 2,
                    stage: str = "model") -> list[tuple[float, float]]:
    """(frames/s, mean detections per frame) per model, timing the models frame by frame in turn.

    Interleaving makes every model see the same CPU load from other processes, so the ratio
    holds on a shared machine even when the absolute rates drift.
    stage: "model" (the whole model call: transform, network, mask pasting) or "backbone"
    (backbone + FPN on the transformed input only).
    """
    for model in models:
        model.eval()
        for frame in frames[:warmup]:
            model([frame])
    seconds = [0.0] * len(models)
    found = [0] * len(models)
    for frame in frames:
        for i, model in enumerate(models):
            if stage == "backbone":
                x = model.transform([frame])[0].tensors
                start = time.perf_counter()
                model.backbone(x)
            else:
                start = time.perf_counter()
                found[i] += len(model([frame])[0]["scores"])
            seconds[i] += time.perf_counter() - start
    return [(len(frames) / s, f / len(frames)) for s, f in zip(seconds, found)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--model", type=Path, default=SHAPES_CHECKPOINT)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        render_clip(video, Path(tmp) / "bench.json", seed=12345, frames=args.frames)
        frames = [torch.from_numpy(f).permute(2, 0, 1).float().div(255.0) for f in decode_frames(video)]

    compact, config = load_shapes_model(args.model)
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=360, max_size=640,
        box_score_thresh=config.score_threshold, box_detections_per_img=config.max_detections,
    )
    # Timed on a worker thread, as the pipeline runs its engine (see worker_thread.py).
    (compact_fps, compact_found), (reference_fps, reference_found) = on_worker_thread(
        lambda: interleaved_fps([compact, reference], frames))
    (compact_bb, _), (reference_bb, _) = on_worker_thread(
        lambda: interleaved_fps([compact, reference], frames, stage="backbone"))
    h, w = frames[0].shape[1:]
    print(f"frames: {len(frames)} of {w}x{h}, torch threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"compact ({args.model.name}, input {config.input_size[1]}x{config.input_size[0]}): "
          f"{compact_fps:.2f} frames/s, {compact_found:.1f} detections/frame")
    print(f"maskrcnn_resnet50_fpn (input {w}x{h}): {reference_fps:.3f} frames/s, {reference_found:.1f} detections/frame")
    print(f"speed ratio compact / resnet50_fpn, end to end: {compact_fps / reference_fps:.1f}x")
    print(f"backbone+FPN only: compact {compact_bb:.1f} frames/s, resnet50_fpn {reference_bb:.2f} frames/s, "
          f"ratio {compact_bb / reference_bb:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
