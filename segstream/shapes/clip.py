"""Shapes clips: an H.264 mp4 as a camera would deliver it, with COCO ground truth.

    python -m segstream.shapes.clip OUT.mp4 OUT.json --seed 7 --frames 300

The clip is a sequence of scenes; each scene has its own background (a cut to the next one) and
its own objects, which move and rotate from frame to frame and may leave the frame. Ground truth
is a COCO instances file: one image per decoded frame (`id` = frame index + 1, and the extra
field `frame` = frame index), categories 1..4 = CLASS_NAMES, one annotation per visible object
with its visible mask as compressed RLE (full frame, column-major), `bbox` [x, y, w, h] of the
visible mask, `area` = visible pixels, and the extra fields `colour` (fill RGB) and `track`
(object id within the clip).
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
from pycocotools import mask as mask_utils

from segstream.shapes.backgrounds import HELDOUT_PHOTOS, random_background
from segstream.shapes.scene import CLASS_NAMES, FRAME_SIZE, paint, random_scene

#: Visible parts smaller than this (frame pixels) are not annotated: a few pixels of an object
#: cannot be told apart from its background, in the ground truth or by a viewer.
MIN_GT_PIXELS = 40


def coco_categories() -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)]


def record_frame(index: int, video_name: str, width: int, height: int, shapes: Sequence, visible: Sequence[np.ndarray],
                 tracks: Sequence[int], images: list[dict], annotations: list[dict]) -> None:
    """Append frame `index`'s COCO image record and one annotation per shape seen well enough.

    visible: per shape, bool [height, width], the pixels of it not hidden by shapes in front;
    tracks: per shape, its identity in the clip. Masks below MIN_GT_PIXELS are left out.
    """
    images.append({"id": index + 1, "frame": index, "width": width, "height": height,
                   "file_name": f"{video_name}#{index}"})
    for shape, mask, track in zip(shapes, visible, tracks):
        area = int(mask.sum())
        if area < MIN_GT_PIXELS:
            continue
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({
            "id": len(annotations) + 1, "image_id": index + 1, "category_id": shape.class_id,
            "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
            "area": area, "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
            "colour": list(shape.colour), "track": track,
        })


def encode_frame(container: av.container.OutputContainer, stream: av.VideoStream, image: np.ndarray, pts: int) -> None:
    """Encode one uint8 [H, W, 3] RGB frame at `pts` (frame ticks) into the clip."""
    video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    video_frame.pts = pts
    for packet in stream.encode(video_frame):
        container.mux(packet)


def render_clip(
    video_path: str | Path,
    gt_path: str | Path,
    seed: int,
    frames: int = 300,
    fps: int = 30,
    size: tuple[int, int] = FRAME_SIZE,
    photos: tuple[str, ...] = HELDOUT_PHOTOS,
    crf: int = 23,
    scene_frames: tuple[int, int] = (45, 150),
) -> dict:
    """Render a clip and its ground truth; returns the COCO dict that was written to gt_path.

    size: (width, height) in pixels, both even (yuv420p). photos: the photograph pool for
    photo backgrounds (held-out photographs by default: clips are for evaluation).
    scene_frames: the range of a scene's length in frames (short scenes: more variety per frame
    evaluated).
    """
    width, height = size
    rng = np.random.default_rng([0xC11, seed])  # disjoint from the training streams ([train seed, k])
    images, annotations, tracks = [], [], 0
    container = av.open(str(video_path), mode="w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = Fraction(1, fps)
    stream.options = {"crf": str(crf), "preset": "veryfast"}
    frame_index = 0
    try:
        while frame_index < frames:
            # One scene: a background, objects, some motion, then a cut.
            background = random_background(rng, width, height, photos)
            shapes = random_scene(rng, width, height)
            ids = list(range(tracks, tracks + len(shapes)))
            tracks += len(shapes)
            for _ in range(int(rng.integers(scene_frames[0], scene_frames[1] + 1))):
                if frame_index >= frames:
                    break
                image, visible = paint(background, shapes, rng)
                record_frame(frame_index, Path(video_path).name, width, height, shapes, visible, ids, images, annotations)
                encode_frame(container, stream, image, frame_index)
                shapes = [s.moved() for s in shapes]
                frame_index += 1
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    coco = {"info": {"description": f"segstream shapes clip seed={seed}", "fps": fps},
            "images": images, "annotations": annotations, "categories": coco_categories()}
    Path(gt_path).write_text(json.dumps(coco))
    return coco


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segstream.shapes.clip", description="Render a shapes clip with COCO ground truth.")
    parser.add_argument("video", type=Path, help="output .mp4")
    parser.add_argument("gt", type=Path, help="output COCO .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--crf", type=int, default=23, help="x264 quality (lower is better)")
    parser.add_argument("--scene-frames", type=int, nargs=2, default=(45, 150), metavar=("MIN", "MAX"),
                        help="length range of a scene between cuts")
    parser.add_argument("--training-photos", action="store_true", help="use the training photographs, not the held-out ones")
    args = parser.parse_args(argv)
    from segstream.shapes.backgrounds import TRAIN_PHOTOS

    coco = render_clip(args.video, args.gt, args.seed, args.frames, args.fps, crf=args.crf, scene_frames=tuple(args.scene_frames),
                       photos=TRAIN_PHOTOS if args.training_photos else HELDOUT_PHOTOS)
    print(f"{args.video}: {len(coco['images'])} frames, {len(coco['annotations'])} instances; ground truth {args.gt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
