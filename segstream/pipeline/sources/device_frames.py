"""Getting frames onto the GPU: NVDEC decoding where PyNvVideoCodec loads, otherwise CPU decoding
plus one upload per frame from a reused pinned buffer.

    backend = decode_backend("cuda")     # DecodeBackend("nvdec" | "cpu", reason)
    upload = PinnedUpload(device)        # numpy uint8 [h, w, 3] -> device tensor, on the caller's stream

NVDEC: PyNvVideoCodec decodes on the GPU's video engine into device memory (pipeline/sources/nvdec.py,
local files). It is not a dependency of segstream (its import needs the driver's video libraries,
which a container gets only with NVIDIA_DRIVER_CAPABILITIES including `video`); `decode_backend`
says whether it is usable and, if not, why, and the pipeline falls back to its PyAV sources (CPU
decoding) with `PinnedUpload`. Cameras and http(s) files always take the PyAV path (its
reconnection and stall handling). torchcodec's CUDA decoder is the other candidate: it needs the
system's FFmpeg libraries, which the GPU image lacks, so it is not wired.

Why a ring of pinned buffers: `tensor.pin_memory()` per frame allocates page-locked memory and
copies the frame into it every time (an extra host copy plus a costly allocation); a pinned buffer
kept per slot is written once and uploaded asynchronously. A slot is reused only after the event of
its previous upload has completed, so an upload still in flight is never overwritten.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from segstream.pipeline.stages.device_streams import device_type

if TYPE_CHECKING:  # torch is imported where a GPU is used: a CPU run may have no torch
    import torch

Decoder = Literal["auto", "nvdec", "cpu"]


@dataclass(frozen=True)
class DecodeBackend:
    """name: nvdec or cpu. reason: why this one (one line)."""

    name: str
    reason: str


def decode_backend(device: "str | torch.device", prefer: Decoder = "auto") -> DecodeBackend:
    """The decoder a file on `device` uses: NVDEC through PyNvVideoCodec when it loads and a CUDA
    device exists, else CPU decoding (PyAV) with one pinned upload per frame.

    prefer: auto or nvdec (NVDEC when usable), cpu (always the CPU).
    """
    kind = device_type(device)
    if prefer == "cpu":
        return DecodeBackend("cpu", "CPU decoding was asked for")
    if kind != "cuda":
        return DecodeBackend("cpu", f"the engine runs on {kind}: frames are decoded on the CPU")
    import torch

    if not torch.cuda.is_available():
        return DecodeBackend("cpu", "no CUDA device: frames are decoded on the CPU")
    return _nvdec_loads()


@functools.lru_cache(maxsize=1)
def _nvdec_loads() -> DecodeBackend:
    # Asked once per process: a failed import is retried by Python every time (and PyNvVideoCodec
    # logs its driver check each time), while the answer cannot change during a run.
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        return DecodeBackend("cpu", "PyNvVideoCodec is not installed: CPU decoding plus a pinned upload")
    except Exception as exc:  # its import checks the driver's video libraries and raises RuntimeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return DecodeBackend("cpu", f"PyNvVideoCodec cannot load ({first}): CPU decoding plus a pinned upload")
    return DecodeBackend("nvdec", "PyNvVideoCodec loads and a GPU is present")


class _Slot:
    def __init__(self) -> None:
        self.buffer: "torch.Tensor | None" = None
        self.done: "torch.cuda.Event | None" = None


class PinnedUpload:
    """uint8 frames [h, w, 3] (numpy) to `device` through a ring of reused pinned host buffers.

    Each call copies the frame once into its slot's page-locked buffer and enqueues a
    non-blocking upload on the current stream; returns the device tensor (uint8 [h, w, 3]).
    On a CPU device it returns a tensor sharing the frame's memory (nothing to upload).
    """

    def __init__(self, device: "str | torch.device", slots: int = 4) -> None:
        import torch

        self.device = torch.device(device)
        self._slots = [_Slot() for _ in range(max(1, slots))]
        self._next = 0
        self.allocations = 0  # pinned buffers allocated so far (tests: reuse means few)

    def __call__(self, image: np.ndarray) -> "torch.Tensor":
        import torch

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
