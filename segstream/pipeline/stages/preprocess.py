"""Preprocess stage: Frames -> one Batch (resize to fit, normalise, pad) on the engine's device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from segstream.engines.model_config import ModelConfig, fit_size  # noqa: F401 (fit_size: re-exported)
from segstream.pipeline.stages.bilinear import resize_image
from segstream.pipeline.stages.device_streams import device_type, hand_over, on_stream, stage_stream, take_over
from segstream.pipeline.stages.gating import in_stream_order
from segstream.pipeline.messages import Batch, Frame

if TYPE_CHECKING:  # the GPU path's types; a CPU batch is made in numpy
    import torch


class Preprocess:
    """Takes up to `batch_size` waiting frames and makes one network input of them.

    On the CPU the arithmetic runs in numpy, single-threaded: the engine's thread pool owns the
    cores, and a second torch thread pool contending with it costs more than it gains. A frame
    that does not fit as decoded is resized in numpy with torch's bilinear semantics
    (pipeline/stages/bilinear.py). host_arrays: the engine takes the numpy batch itself (a torch-free
    engine, engines/protocol.py); otherwise the batch is wrapped as a torch tensor (no copy). On a GPU
    each frame is uploaded once from a reused pinned buffer (device_frames.PinnedUpload) and the
    colour conversion, resize and normalisation run on the device, on the stage's own CUDA stream;
    the Batch carries an event recorded after its last kernel, which the inference stage's stream
    waits for (no default stream, no host wait; pipeline/stages/device_streams.py).
    """

    name = "preprocess"

    def __init__(self, config: ModelConfig, device: "torch.device | str", batch_size: int,
                 host_arrays: bool = False) -> None:
        self.take = batch_size
        self.input_size = config.input_size
        self.device = device
        self.on_host = device_type(device) == "cpu"
        self.host_arrays = host_arrays
        self._mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
        self._std = np.asarray(config.std, dtype=np.float32)[:, None, None]
        # uint8 pixel p -> (p / 255 - mean) / std == p * scale + shift
        self._scale = (1.0 / (255.0 * np.asarray(config.std, dtype=np.float32))).astype(np.float32)
        self._shift = (-np.asarray(config.mean, dtype=np.float32) / np.asarray(config.std, dtype=np.float32)).astype(np.float32)
        self.upload = None
        if not self.on_host:
            import torch

            from segstream.pipeline.sources.device_frames import PinnedUpload

            self.mean = torch.tensor(config.mean, device=device).view(3, 1, 1)
            self.std = torch.tensor(config.std, device=device).view(3, 1, 1)
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
            on_device = [f.image for f in frames if not isinstance(f.image, np.ndarray)]
            take_over(self.stream, [f.ready for f in frames], on_device)
            batch = self._batch(frames)
            batch.ready = hand_over(self.stream)
        return batch

    def _batch(self, frames: list[Frame]) -> Batch:
        height, width = self.input_size
        shape = (len(frames), 3, height, width)
        if self.on_host:  # numpy's zeros come from calloc: no pass over the memory
            images: Any = np.zeros(shape, dtype=np.float32)
        else:
            import torch

            images = torch.zeros(shape, dtype=torch.float32, device=self.device)
        sizes, scales = [], []
        for i, frame in enumerate(frames):
            h, w = fit_size(frame.height, frame.width, self.input_size)
            if not self.on_host:
                images[i, :, :h, :w] = self._on_device(frame.image, h, w)
            elif (h, w) == frame.image.shape[:2]:
                self._normalise_into(images[i], frame.host_image())
            else:
                self._resize_into(images[i], frame.host_image(), h, w)
            sizes.append((h, w))
            scales.append((h / frame.height, w / frame.width))
        if self.on_host and not self.host_arrays:
            import torch  # a torch engine: it is loaded already

            images = torch.from_numpy(images)
        return Batch(frames=frames, images=images, image_sizes=sizes, scales=scales)

    def _resize_into(self, out: np.ndarray, image: np.ndarray, h: int, w: int) -> None:
        """out: float32 [3, H, W] view of the batch slot; image: uint8 [h0, w0, 3] -> resized to
        [h, w] as the device path does: (bilinear(p / 255) - mean) / std, in float32."""
        pixels = image.astype(np.float32)
        pixels /= np.float32(255.0)
        resized = resize_image(pixels, h, w).transpose(2, 0, 1)
        target = out[:, :h, :w]
        np.subtract(resized, self._mean, out=target)
        target /= self._std

    def _normalise_into(self, out: np.ndarray, image: np.ndarray) -> None:
        """out: float32 [3, H, W] view of the batch slot; image: uint8 [h, w, 3] (fits as is)."""
        h, w, _ = image.shape
        # Transposing the uint8 pixels first keeps the float pass contiguous (about 8x faster).
        planes = np.ascontiguousarray(image.transpose(2, 0, 1))
        target = out[:, :h, :w]
        np.multiply(planes, self._scale[:, None, None], out=target, dtype=np.float32, casting="unsafe")
        target += self._shift[:, None, None]

    def _on_device(self, image: "np.ndarray | torch.Tensor", h: int, w: int) -> "torch.Tensor":
        """image: uint8 [h0, w0, 3] (numpy, or a tensor already on the device) -> float32 [3, h, w]
        normalised, on the engine's device."""
        import torch
        import torch.nn.functional as F

        # One upload per host frame (a reused pinned buffer); the resize and normalisation run where the engine is.
        pixels = image.to(self.device) if isinstance(image, torch.Tensor) else self.upload(image)
        tensor = pixels.permute(2, 0, 1).float().div_(255.0)
        if (h, w) != tuple(tensor.shape[1:]):
            tensor = F.interpolate(tensor[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return (tensor - self.mean) / self.std
