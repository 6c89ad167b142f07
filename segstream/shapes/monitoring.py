"""A monitoring-camera clip: one scene, sensor noise on every frame, objects that stand still
most of the time and move in short bursts. For motion gating's tests and benchmark.

    python -m segstream.shapes.monitoring OUT.mp4 OUT.json --seed 3 --frames 300 --fps 10

Ground truth is the same COCO file as segstream.shapes.clip writes (one image per frame, `id` =
frame index + 1, visible masks as compressed RLE, `track` per object), plus `info.moving`: per
frame, whether any object moved since the previous frame (about `motion_share` of them do).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from segstream.shapes.backgrounds import HELDOUT_PHOTOS, random_background
from segstream.shapes.clip import coco_categories, encode_frame, record_frame
from segstream.shapes.dataset import FRAME_SIZE
from segstream.shapes.scene import Shape, paint, random_shape


def motion_schedule(rng: np.random.Generator, frames: int, motion_share: float,
                    burst: tuple[int, int]) -> np.ndarray:
    """bool [frames]: True where objects move. Bursts of burst[0]..burst[1] frames separated by
    still gaps whose mean length makes about `motion_share` of the frames move; frame 0 is still."""
    moving = np.zeros(frames, dtype=bool)
    if motion_share <= 0:  # a still scene: only noise
        return moving
    mean_burst = (burst[0] + burst[1]) / 2
    mean_gap = mean_burst * (1 - motion_share) / motion_share
    i = int(rng.integers(1, max(2, int(mean_gap)) + 1))
    while i < frames:
        length = int(rng.integers(burst[0], burst[1] + 1))
        moving[i:i + length] = True
        i += length + max(1, int(rng.exponential(mean_gap)))
    return moving


def _inside(shape: Shape, width: int, height: int) -> Shape:
    """The shape with its centre moved so that all of it is in the frame, standing still."""
    r = shape.radius
    return replace(shape, cx=float(np.clip(shape.cx, r, width - r)), cy=float(np.clip(shape.cy, r, height - r)),
                   vx=0.0, vy=0.0, spin=0.0)


def _step(shape: Shape, width: int, height: int) -> Shape:
    """One frame of motion, bouncing off the frame's edges."""
    moved = shape.moved()
    r = shape.radius
    vx, vy = moved.vx, moved.vy
    if not r <= moved.cx <= width - r:
        vx = -vx
    if not r <= moved.cy <= height - r:
        vy = -vy
    return replace(moved, cx=float(np.clip(moved.cx, r, width - r)), cy=float(np.clip(moved.cy, r, height - r)),
                   vx=vx, vy=vy)


def render_monitoring_clip(
    video_path: str | Path,
    gt_path: str | Path,
    seed: int,
    frames: int = 300,
    fps: int = 10,
    motion_share: float = 0.25,
    burst: tuple[int, int] = (3, 8),
    objects: tuple[int, int] = (3, 6),
    sensor_noise: float = 3.0,
    speed: tuple[float, float] = (2.0, 6.0),
    size: tuple[int, int] = FRAME_SIZE,
    crf: int = 23,
) -> dict:
    """Render the clip and its ground truth (returned, and written to gt_path).

    sensor_noise: standard deviation (grey levels) of the Gaussian noise added to every pixel of
    every frame. speed: pixels per frame of an object in a burst. In each burst one or two
    objects move, each in its own direction; between bursts nothing moves.
    """
    width, height = size
    rng = np.random.default_rng([0x6A7E, seed])
    background = random_background(rng, width, height, HELDOUT_PHOTOS)
    count = int(rng.integers(objects[0], objects[1] + 1))
    shapes = [_inside(random_shape(rng, width, height), width, height) for _ in range(count)]
    moving = motion_schedule(rng, frames, motion_share, burst)
    images, annotations = [], []
    movers: list[int] = []
    container = av.open(str(video_path), mode="w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = Fraction(1, fps)
    stream.options = {"crf": str(crf), "preset": "veryfast"}
    try:
        for index in range(frames):
            if moving[index]:
                if index == 0 or not moving[index - 1]:  # a new burst: who moves, which way
                    movers = list(rng.choice(len(shapes), size=min(len(shapes), int(rng.integers(1, 3))), replace=False))
                    for k in movers:
                        v, heading = float(rng.uniform(*speed)), float(rng.uniform(0, 2 * math.pi))
                        shapes[k] = replace(shapes[k], vx=v * math.cos(heading), vy=v * math.sin(heading),
                                            spin=float(rng.uniform(-0.05, 0.05)))
                for k in movers:
                    shapes[k] = _step(shapes[k], width, height)
            image, visible = paint(background, shapes, rng)
            noisy = image.astype(np.float32) + rng.normal(0.0, sensor_noise, size=image.shape).astype(np.float32)
            image = np.clip(noisy, 0, 255).astype(np.uint8)
            record_frame(index, Path(video_path).name, width, height, shapes, visible, range(len(shapes)),
                         images, annotations)
            encode_frame(container, stream, image, index)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    coco = {"info": {"description": f"segstream monitoring clip seed={seed}", "fps": fps,
                     "moving": [bool(m) for m in moving]},
            "images": images, "annotations": annotations, "categories": coco_categories()}
    Path(gt_path).write_text(json.dumps(coco))
    return coco


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segstream.shapes.monitoring", description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, help="output .mp4")
    parser.add_argument("gt", type=Path, help="output COCO .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--motion-share", type=float, default=0.25)
    parser.add_argument("--sensor-noise", type=float, default=3.0)
    args = parser.parse_args(argv)
    coco = render_monitoring_clip(args.video, args.gt, args.seed, args.frames, args.fps, args.motion_share,
                                  sensor_noise=args.sensor_noise)
    moving = sum(coco["info"]["moving"])
    print(f"{args.video}: {len(coco['images'])} frames ({moving} with motion), {len(coco['annotations'])} instances; "
          f"ground truth {args.gt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
