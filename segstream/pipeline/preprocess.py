"""Preprocess stage: Frames -> one Batch (resize to fit, normalise, pad) on the engine's device."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from segstream.engines.model_config import ModelConfig
from segstream.pipeline.device_frames import PinnedUpload
from segstream.pipeline.device_streams import hand_over, on_stream, stage_stream, take_over
from segstream.pipeline.gating import in_stream_order
from segstream.pipeline.messages import Batch, Frame


def fit_size(height: int, width: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a frame resized to fit inside input_size, keeping its aspect ratio."""
    limit_h, limit_w = input_size
    scale = min(limit_h / height, limit_w / width)
    # The epsilon keeps an exact fit (e.g. 360 * (384/360)) from flooring one pixel short.
    return (min(limit_h, max(1, int(height * scale + 1e-4))), min(limit_w, max(1, int(width * scale + 1e-4))))


class Preprocess:
    """Takes up to `batch_size` waiting frames and makes one network input of them.

    On the CPU the arithmetic runs in numpy, single-threaded: the engine's thread pool owns the
    cores, and a second torch thread pool contending with it costs more than it gains. On a GPU
    each frame is uploaded once from a reused pinned buffer (device_frames.PinnedUpload) and the
    colour conversion, resize and normalisation run on the device, on the stage's own CUDA stream;
    the Batch carries an event recorded after its last kernel, which the inference stage's stream
    waits for (no default stream, no host wait; pipeline/device_streams.py).
    """

    name = "preprocess"

    def __init__(self, config: ModelConfig, device: torch.device, batch_size: int) -> None:
        self.take = batch_size
        self.input_size = config.input_size
        self.device = device
        self.mean = torch.tensor(config.mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(config.std, device=device).view(3, 1, 1)
        # uint8 pixel p -> (p / 255 - mean) / std == p * scale + shift
        self._scale = (1.0 / (255.0 * np.asarray(config.std, dtype=np.float32))).astype(np.float32)
        self._shift = (-np.asarray(config.mean, dtype=np.float32) / np.asarray(config.std, dtype=np.float32)).astype(np.float32)
        self.upload = PinnedUpload(device)
        self.stream = stage_stream(device)

    def process(self, items: list[Any]) -> Iterable[Any]:
        # Markers (end of stream, status, frames the gate skipped) keep their place in their
        # stream: a batch is cut only where a stream's marker sits between two of its frames.
        for part in in_stream_order(items):
            if isinstance(part, list):
                if part:
                    yield self.batch(part)
            else:
                yield part

    def flush(self) -> Iterable[Any]:
        return ()

    def batch(self, frames: list[Frame]) -> Batch:
        with on_stream(self.stream):
            # Frames decoded on the GPU (NVDEC) were written on the decoder's stream.
            on_device = [f.image for f in frames if isinstance(f.image, torch.Tensor)]
            take_over(self.stream, [f.ready for f in frames], on_device)
            batch = self._batch(frames)
            batch.ready = hand_over(self.stream)
        return batch

    def _batch(self, frames: list[Frame]) -> Batch:
        height, width = self.input_size
        shape = (len(frames), 3, height, width)
        if self.device.type == "cpu":  # numpy's zeros come from calloc: no pass over the memory
            images = torch.from_numpy(np.zeros(shape, dtype=np.float32))
        else:
            images = torch.zeros(shape, dtype=torch.float32, device=self.device)
        sizes, scales = [], []
        for i, frame in enumerate(frames):
            h, w = fit_size(frame.height, frame.width, self.input_size)
            if self.device.type == "cpu" and (h, w) == frame.image.shape[:2]:
                self._normalise_into(images[i].numpy(), frame.image)
            else:
                images[i, :, :h, :w] = self._on_device(frame.image, h, w)
            sizes.append((h, w))
            scales.append((h / frame.height, w / frame.width))
        return Batch(frames=frames, images=images, image_sizes=sizes, scales=scales)

    def _normalise_into(self, out: np.ndarray, image: np.ndarray) -> None:
        """out: float32 [3, H, W] view of the batch slot; image: uint8 [h, w, 3] (fits as is)."""
        h, w, _ = image.shape
        # Transposing the uint8 pixels first keeps the float pass contiguous (about 8x faster).
        planes = np.ascontiguousarray(image.transpose(2, 0, 1))
        target = out[:, :h, :w]
        np.multiply(planes, self._scale[:, None, None], out=target, dtype=np.float32, casting="unsafe")
        target += self._shift[:, None, None]

    def _on_device(self, image: np.ndarray | torch.Tensor, h: int, w: int) -> torch.Tensor:
        """image: uint8 [h0, w0, 3] (numpy, or a tensor already on the device) -> float32 [3, h, w]
        normalised, on the engine's device."""
        # One upload per host frame (a reused pinned buffer); the resize and normalisation run where the engine is.
        pixels = image.to(self.device) if isinstance(image, torch.Tensor) else self.upload(image)
        tensor = pixels.permute(2, 0, 1).float().div_(255.0)
        if (h, w) != tuple(tensor.shape[1:]):
            tensor = F.interpolate(tensor[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return (tensor - self.mean) / self.std
