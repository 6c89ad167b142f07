"""Training samples rendered on the fly, already at the network's input resolution.

A sample is drawn the way the pipeline will see a frame: the scene is painted at camera
resolution (640x360), degraded like a lossy camera stream (JPEG at a random quality stands in for
H.264 with 4:2:0 chroma), then resized to fit ModelConfig.input_size keeping the aspect ratio.
The pipeline pads bottom/right; torchvision's transform does the same padding in training.
"""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from segstream.engines.model_config import fit_size
from segstream.shapes.backgrounds import TRAIN_PHOTOS, random_background
from segstream.shapes.scene import FRAME_SIZE, Shape, paint, random_scene, random_shape  # noqa: F401 (re-exported)

#: Visible instances smaller than this many input pixels are not used as targets.
MIN_VISIBLE_PIXELS = 12


def camera_degrade(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lossy-stream look: JPEG with 4:2:0 chroma at a random quality (or none), uint8 [H, W, 3]."""
    if rng.random() < 0.15:
        return frame
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=int(rng.integers(20, 92)), subsampling=2)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def render_sample(
    rng: np.random.Generator, input_size: tuple[int, int], photos: tuple[str, ...] = TRAIN_PHOTOS
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training image and its torchvision Mask R-CNN target.

    Returns image float32 [3, h, w] in [0, 1] (RGB, h x w = the frame resized to fit input_size,
    unpadded) and target {boxes float32 [N, 4] x1,y1,x2,y2 in input pixels, labels int64 [N],
    masks uint8 [N, h, w]} of the visible parts.
    """
    width, height = FRAME_SIZE
    shapes = random_scene(rng, width, height)
    frame, visible = paint(random_background(rng, width, height, photos), shapes, rng)
    frame = camera_degrade(frame, rng)
    # The pipeline's own rule, so training sees exactly the frame size the engine is fed.
    h, w = fit_size(height, width, input_size)
    resample = Image.BILINEAR if rng.random() < 0.5 else Image.BOX
    image = np.asarray(Image.fromarray(frame).resize((w, h), resample))
    boxes, labels, masks = [], [], []
    for shape, mask in zip(shapes, visible):
        if not mask.any():
            continue
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)) >= 128
        if small.sum() < MIN_VISIBLE_PIXELS:
            continue
        ys, xs = np.nonzero(small)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(shape.class_id)
        masks.append(small)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
    }
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
    return tensor, target


class ShapesStream(torch.utils.data.IterableDataset):
    """Endless reproducible stream of training samples.

    Sample k of a stream with seed s is a function of (s, k) only, so resuming at step n with
    batch b continues with sample n*b; DataLoader workers split the index space between them.
    """

    def __init__(self, seed: int, input_size: tuple[int, int], start: int = 0) -> None:
        super().__init__()
        self.seed, self.input_size, self.start = seed, tuple(input_size), start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        k = self.start + worker
        while True:
            yield render_sample(np.random.default_rng([self.seed, k]), self.input_size)  # type: ignore[arg-type]
            k += workers


#: The shapes model's int8 calibration set (segstream export openvino --model shapes --precision int8):
#: frames of its domain from this seed, never the held-out clips' seeds.
CALIBRATION_SEED = 0x0F1A


def calibration_frames(count: int, seed: int = CALIBRATION_SEED) -> list[np.ndarray]:
    """`count` camera frames uint8 [360, 640, 3] RGB of the shapes domain (training photographs),
    as a camera of it would send them: the int8 calibration data of the shapes model, which the
    command and test layers hand to the engines (engines/calibration.py makes network inputs of them)."""
    rng = np.random.default_rng(seed)
    width, height = FRAME_SIZE
    frames = []
    for _ in range(count):
        shapes = random_scene(rng, width, height)
        frame, _ = paint(random_background(rng, width, height, TRAIN_PHOTOS), shapes, rng)
        frames.append(camera_degrade(frame, rng))
    return frames
