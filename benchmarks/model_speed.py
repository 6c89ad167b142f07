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


@torch.inference_mode()
def frames_per_second(model: torch.nn.Module, frames: list[torch.Tensor], warmup: int = 3) -> tuple[float, float]:
    """(frames/s, mean detections per frame) of model([frame]) over `frames`."""
    model.eval()
    for frame in frames[:warmup]:
        model([frame])
    found = 0
    start = time.perf_counter()
    for frame in frames:
        found += len(model([frame])[0]["scores"])
    return len(frames) / (time.perf_counter() - start), found / len(frames)


@torch.inference_mode()
def backbone_fps(model: torch.nn.Module, frames: list[torch.Tensor], warmup: int = 3) -> float:
    """Frames/s of model.backbone alone on the transformed (resized, padded) frames."""
    model.eval()
    batches = [model.transform([frame])[0].tensors for frame in frames]
    for x in batches[:warmup]:
        model.backbone(x)
    start = time.perf_counter()
    for x in batches:
        model.backbone(x)
    return len(batches) / (time.perf_counter() - start)


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
    torch.manual_seed(0)
    compact_fps, compact_found = frames_per_second(compact, frames)
    reference_fps, reference_found = frames_per_second(reference, frames)
    compact_bb, reference_bb = backbone_fps(compact, frames), backbone_fps(reference, frames)
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
