"""Plugin kernels for the static Mask R-CNN graph: multi-level RoIAlign and batched NMS.

One source for both builds: the per-element arithmetic lives in ``csrc/*.cuh`` as
``__host__ __device__`` functions. CPU tensors run the CPU build (``csrc/host.cpp``, compiled
with the system C++ compiler on first use and loaded with ctypes); CUDA tensors run the CUDA
build (``csrc/kernels.cu``, compiled with NVRTC at run time, launched on torch's current
stream without host synchronisation). Both are cached under ``$SEGSTREAM_CACHE`` (default
``~/.cache/segstream``) by a digest of the sources.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["KERNEL_NAMES", "NMSResult", "batched_nms", "kernel_ptx", "multilevel_roi_align"]

# The torch bindings load on first use: the torch-free modules of this package (host_build,
# host_ops, mask_rle) must import without torch on a base install.
_LAZY = {
    "KERNEL_NAMES": "segstream.kernels.device_build", "kernel_ptx": "segstream.kernels.device_build",
    "NMSResult": "segstream.kernels.nms", "batched_nms": "segstream.kernels.nms",
    "multilevel_roi_align": "segstream.kernels.roi_align",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segstream.kernels' has no attribute {name!r}")
