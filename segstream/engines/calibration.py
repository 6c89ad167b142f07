"""int8 calibration data: frames like the ones a model will see, made into network inputs.

NNCF's post-training quantization picks each layer's int8 range from what the layer sees on a
calibration set, so the set must come from the model's own domain: street scenes for a COCO
model, shapes clips for the bundled shapes model. The engines never make it up; it is passed in,
either as frames (the command and test layers render shapes frames for the shapes model) or as a
path the user names (`segstream export openvino --precision int8 --calibration DIR|VIDEO`):

    DIR     image files (.jpg .jpeg .png .bmp .webp), in name order
    VIDEO   any file PyAV decodes; `count` frames spread over its length

Frames are uint8 [H, W, 3] RGB; `network_inputs` turns them into what the engine is fed: f32
[1, 3, H, W] resized to fit the model's input (engines.model_config.fit_size, bilinear as
torch does it), normalised with the model's mean/std and zero-padded at the bottom/right.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from segstream.engines.model_config import ModelConfig, fit_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: Frames taken from a calibration folder or video when the caller does not say.
DEFAULT_COUNT = 48


class CalibrationError(ValueError):
    """Calibration data cannot be read; the message is one line for the user."""


def read_frames(path: str | Path, count: int = DEFAULT_COUNT) -> list[np.ndarray]:
    """Up to `count` frames uint8 [H, W, 3] RGB from a folder of images or a video file."""
    if count < 1:
        raise CalibrationError(f"calibration frames: {count} must be >= 1")
    where = Path(path)
    if where.is_dir():
        frames = _folder_frames(where, count)
    elif where.is_file():
        frames = _video_frames(where, count)
    else:
        raise CalibrationError(f"--calibration {path}: no such folder or video file")
    if not frames:
        raise CalibrationError(f"--calibration {path}: no frames in it (a folder of images or a video file)")
    return frames


def _folder_frames(folder: Path, count: int) -> list[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    frames = []
    for file in _spread(files, count):
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except (OSError, UnidentifiedImageError) as exc:
            raise CalibrationError(f"--calibration {folder}: cannot read {file.name} ({exc})") from None
    return frames


def _video_frames(file: Path, count: int) -> list[np.ndarray]:
    import av

    try:
        with av.open(str(file)) as container:
            stream = container.streams.video[0]
            total = stream.frames or 0  # 0: the container does not say; take the first `count`
            step = max(1, total // count) if total else 1
            frames = []
            for index, frame in enumerate(container.decode(stream)):
                if index % step == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if len(frames) == count:
                        break
            return frames
    except (av.error.FFmpegError, IndexError) as exc:
        reason = "no video stream" if isinstance(exc, IndexError) else str(exc).splitlines()[0]
        raise CalibrationError(f"--calibration {file}: not a folder of images or a readable video ({reason})") from None


def _spread(items: list[Path], count: int) -> list[Path]:
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]


def network_inputs(config: ModelConfig, frames: Iterable[np.ndarray]) -> list[Tensor]:
    """Each frame (uint8 [H, W, 3] RGB) as the pipeline feeds it: f32 [1, 3, *config.input_size]."""
    height, width = config.input_size
    mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
    inputs = []
    for frame in frames:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise CalibrationError(f"calibration frames are uint8 [H, W, 3] RGB, not {frame.dtype} {list(frame.shape)}")
        image = torch.from_numpy(np.array(frame)).permute(2, 0, 1).float().div_(255.0)
        h, w = fit_size(frame.shape[0], frame.shape[1], (height, width))
        if (h, w) != tuple(frame.shape[:2]):
            image = torch.nn.functional.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        padded = torch.zeros((1, 3, height, width))
        padded[0, :, :h, :w] = (image - mean) / std
        inputs.append(padded)
    return inputs


def digest(inputs: list[Tensor]) -> str:
    """A short hash of a calibration set: int8 builds calibrated on different sets are different builds."""
    h = hashlib.sha256()
    for tensor in inputs:
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
