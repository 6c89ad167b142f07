"""Preprocess stage: Frames -> one Batch (resize to fit, normalise, pad) on the engine's device."""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F

from segstream.engines.model_config import ModelConfig
from segstream.pipeline.messages import Batch, Frame


def fit_size(height: int, width: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a frame resized to fit inside input_size, keeping its aspect ratio."""
    limit_h, limit_w = input_size
    scale = min(limit_h / height, limit_w / width)
    # The epsilon keeps an exact fit (e.g. 360 * (384/360)) from flooring one pixel short.
    return (min(limit_h, max(1, int(height * scale + 1e-4))), min(limit_w, max(1, int(width * scale + 1e-4))))


class Preprocess:
    """Takes up to `batch_size` waiting frames and makes one network input of them."""

    name = "preprocess"

    def __init__(self, config: ModelConfig, device: torch.device, batch_size: int) -> None:
        self.take = batch_size
        self.input_size = config.input_size
        self.device = device
        self.mean = torch.tensor(config.mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(config.std, device=device).view(3, 1, 1)
        self._pin = device.type == "cuda"

    def process(self, items: list[Any]) -> Iterable[Any]:
        frames = [item for item in items if isinstance(item, Frame)]
        if frames:
            yield self.batch(frames)
        # End-of-stream markers follow their stream's frames, which are in the batch above.
        yield from (item for item in items if not isinstance(item, Frame))

    def flush(self) -> Iterable[Any]:
        return ()

    def batch(self, frames: list[Frame]) -> Batch:
        height, width = self.input_size
        images = torch.zeros((len(frames), 3, height, width), dtype=torch.float32, device=self.device)
        sizes, scales = [], []
        for i, frame in enumerate(frames):
            pixels = torch.from_numpy(frame.image)
            if self._pin:
                pixels = pixels.pin_memory()
            # One upload per frame; everything after stays on the device.
            image = pixels.to(self.device, non_blocking=True).permute(2, 0, 1).float().div_(255.0)
            h, w = fit_size(frame.height, frame.width, self.input_size)
            if (h, w) != (frame.height, frame.width):
                image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            images[i, :, :h, :w] = (image - self.mean) / self.std
            sizes.append((h, w))
            scales.append((h / frame.height, w / frame.width))
        return Batch(frames=frames, images=images, image_sizes=sizes, scales=scales)
