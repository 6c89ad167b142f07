"""Plugin kernels for the static Mask R-CNN graph: multi-level RoIAlign and batched NMS.

One source for both builds: the per-element arithmetic lives in ``csrc/*.cuh`` as
``__host__ __device__`` functions. CPU tensors run the CPU build (``csrc/host.cpp``, compiled
by CMake when the wheel is built and loaded with ctypes: ``host_build``); CUDA tensors run the
CUDA build (``csrc/kernels.cu``, compiled with NVRTC at run time, launched on torch's current
stream without host synchronisation, cached under ``$SEGSTREAM_CACHE`` by a digest of the sources).

The torch wrappers below are imported on first use, so that ``segstream.kernels.host_build``
(numpy callers through the C ABI) works on a base install without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "KERNEL_NAMES": "segstream.kernels.device_build",
    "kernel_ptx": "segstream.kernels.device_build",
    "NMSResult": "segstream.kernels.nms",
    "batched_nms": "segstream.kernels.nms",
    "multilevel_roi_align": "segstream.kernels.roi_align",
}

__all__ = ["KERNEL_NAMES", "NMSResult", "batched_nms", "kernel_ptx", "multilevel_roi_align"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segstream.kernels' has no attribute {name!r}")
