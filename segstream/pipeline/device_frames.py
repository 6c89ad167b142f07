"""Getting frames onto the GPU: NVDEC decoding where a decoder library is importable, otherwise CPU
decoding plus one upload per frame from a reused pinned buffer.

    backend = decode_backend("cuda")     # DecodeBackend("torchcodec-cuda" | "pynvvideocodec" | "cpu", reason)
    upload = PinnedUpload(device)        # numpy uint8 [h, w, 3] -> device tensor, on the caller's stream

NVDEC: torchcodec's `VideoDecoder(..., device="cuda")` or PyNvVideoCodec decode on the GPU's video
engine and hand back device tensors. Neither is a dependency of segstream (neither has a wheel for
every platform this runs on); `decode_backend` reports which one is usable and why the others are
not, and the pipeline falls back to its PyAV sources (CPU decoding) with `PinnedUpload`. The NVDEC
sources themselves are not wired into the pipeline yet (docs/gpu.md lists what remains).

Why a ring of pinned buffers: `tensor.pin_memory()` per frame allocates page-locked memory and
copies the frame into it every time (an extra host copy plus a costly allocation); a pinned buffer
kept per slot is written once and uploaded asynchronously. A slot is reused only after the event of
its previous upload has completed, so an upload still in flight is never overwritten.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DecodeBackend:
    """name: torchcodec-cuda, pynvvideocodec or cpu. reason: why this one (one line)."""

    name: str
    reason: str


def decode_backend(device: str | torch.device, prefer: str = "auto") -> DecodeBackend:
    """The decoder a stream on `device` uses: NVDEC through torchcodec or PyNvVideoCodec when
    importable and a CUDA device exists, else CPU decoding (PyAV) with one pinned upload per frame.

    prefer: auto, torchcodec, pynvvideocodec or cpu.
    """
    device = torch.device(device)
    if prefer == "cpu":
        return DecodeBackend("cpu", "CPU decoding was asked for")
    if device.type != "cuda":
        return DecodeBackend("cpu", f"the engine runs on {device.type}: frames are decoded on the CPU")
    if not torch.cuda.is_available():
        return DecodeBackend("cpu", "no CUDA device: frames are decoded on the CPU")
    missing = []
    for name, module in (("torchcodec", "torchcodec"), ("pynvvideocodec", "PyNvVideoCodec")):
        if prefer not in ("auto", name):
            continue
        if importlib.util.find_spec(module) is None:
            missing.append(module)
            continue
        return DecodeBackend("torchcodec-cuda" if name == "torchcodec" else name, f"{module} is importable and a GPU is present")
    return DecodeBackend("cpu", f"{' and '.join(missing) or 'no NVDEC decoder'} not installed: CPU decoding plus a pinned upload")


class _Slot:
    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.done: torch.cuda.Event | None = None


class PinnedUpload:
    """uint8 frames [h, w, 3] (numpy) to `device` through a ring of reused pinned host buffers.

    Each call copies the frame once into its slot's page-locked buffer and enqueues a
    non-blocking upload on the current stream; returns the device tensor (uint8 [h, w, 3]).
    On a CPU device it returns a tensor sharing the frame's memory (nothing to upload).
    """

    def __init__(self, device: str | torch.device, slots: int = 4) -> None:
        self.device = torch.device(device)
        self._slots = [_Slot() for _ in range(max(1, slots))]
        self._next = 0
        self.allocations = 0  # pinned buffers allocated so far (tests: reuse means few)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(np.ascontiguousarray(image))
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot.done is not None:
            slot.done.synchronize()  # the upload that used this slot last has finished reading it
        size = image.size
        if slot.buffer is None or slot.buffer.numel() < size:
            slot.buffer = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            self.allocations += 1
        staged = slot.buffer[:size].view(image.shape)
        np.copyto(staged.numpy(), image, casting="no")
        out = staged.to(self.device, non_blocking=True)
        slot.done = torch.cuda.Event()
        slot.done.record(torch.cuda.current_stream(self.device))
        return out
