"""Plugin kernels for the static Mask R-CNN graph: multi-level RoIAlign and batched NMS.

One source for both builds: the per-element arithmetic lives in ``csrc/*.cuh`` as
``__host__ __device__`` functions. CPU tensors run the CPU build (``csrc/host.cpp``, compiled
with the system C++ compiler on first use and loaded with ctypes); CUDA tensors run the CUDA
build (``csrc/kernels.cu``, compiled with NVRTC at run time, launched on torch's current
stream without host synchronisation). Both are cached under ``$SEGSTREAM_CACHE`` (default
``~/.cache/segstream``) by a digest of the sources.
"""

from segstream.kernels.device_build import KERNEL_NAMES, kernel_ptx
from segstream.kernels.nms import NMSResult, batched_nms
from segstream.kernels.roi_align import multilevel_roi_align

__all__ = ["KERNEL_NAMES", "NMSResult", "batched_nms", "kernel_ptx", "multilevel_roi_align"]
