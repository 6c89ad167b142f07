"""Mask paste, threshold and full-frame COCO RLE in one kernel: only counts leave the device.

`mask_rle_counts` pastes each instance's M x M probabilities into its box of a height x width
frame, thresholds them and returns COCO's uncompressed counts of the whole frame (column-major),
exactly as segstream's CPU postprocess does with `paste_regions` + `encode_region`; the counts are
those `pycocotools.mask.encode` gives for that binary mask. CPU tensors run the C++ build, CUDA
tensors the NVRTC build (one block per instance, launched on torch's current stream, no host
synchronisation, fixed-size outputs: it can be captured in a CUDA graph). `compress_counts` turns
one row into COCO's compressed string on the host.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from segstream.kernels import device_build, host_build

_THREADS = 256


class MaskRLE(NamedTuple):
    """Fixed-size result for N instances.

    counts: int32 [N, cap], the first num[i] entries of row i are its COCO counts (when num[i] <= cap).
    num: int32 [N], how many counts instance i has; num[i] > cap means the row did not fit (a very
        ragged mask): encode that instance another way.
    regions: int32 [N, 4], x0, y0, x1, y1 of the pasted region in frame pixels (end exclusive;
        all zero when the box lies outside the frame).
    """

    counts: torch.Tensor
    num: torch.Tensor
    regions: torch.Tensor


def default_cap(width: int) -> int:
    """Counts per instance kept: four changes per column of the widest frame (a mask with a hole
    across its whole width), plus slack. A row that needs more is reported, not cut."""
    return 4 * int(width) + 64


def mask_rle_counts(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    frame_sizes: torch.Tensor,
    threshold: float,
    cap: int,
    *,
    _launch: Callable[..., None] | None = None,
) -> MaskRLE:
    """Paste, threshold and run-length encode N masks, each into its own frame.

    masks: float32 [N, M, M] probabilities over each box. boxes: float32 [N, 4] x1, y1, x2, y2 in
    frame pixels (clipped to the frame, as the postprocess makes them). frame_sizes: int [N, 2]
    (height, width) of each instance's frame. threshold: a pixel is 1 when its pasted probability
    is > threshold (float32). cap: counts kept per instance (see MaskRLE).
    ``_launch`` (tests only) replaces the CUDA launcher and forces the CUDA path.
    """
    if masks.dim() != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must be [N, M, M], got {tuple(masks.shape)}")
    n, m = masks.shape[0], masks.shape[1]
    if tuple(boxes.shape) != (n, 4) or tuple(frame_sizes.shape) != (n, 2):
        raise ValueError(f"boxes must be [{n}, 4] and frame_sizes [{n}, 2], got {tuple(boxes.shape)}, {tuple(frame_sizes.shape)}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    device = masks.device
    counts = torch.empty((n, cap), dtype=torch.int32, device=device)
    num = torch.empty((n,), dtype=torch.int32, device=device)
    regions = torch.empty((n, 4), dtype=torch.int32, device=device)
    if n == 0:
        return MaskRLE(counts, num, regions)
    masks32 = masks.to(torch.float32).contiguous()
    boxes32 = boxes.to(device=device, dtype=torch.float32).contiguous()
    sizes32 = frame_sizes.to(device=device, dtype=torch.int32).contiguous()
    # The postprocess multiplies float32 half-sizes by the Python float (M + 2) / M: rounded to float32.
    grow = float(np.float32((m + 2) / m))
    thr = float(np.float32(threshold))
    if device.type == "cpu" and _launch is None:
        host_build.library().segstream_mask_rle(
            masks32.data_ptr(), boxes32.data_ptr(), sizes32.data_ptr(), n, m, grow, thr, cap,
            counts.data_ptr(), num.data_ptr(), regions.data_ptr(), torch.get_num_threads(),
        )
        return MaskRLE(counts, num, regions)
    if device.type != "cuda" and _launch is None:
        raise ValueError(f"unsupported device {device}")
    p = device_build.pointer
    args = [p(masks32), p(boxes32), p(sizes32), ctypes.c_int(m), ctypes.c_float(grow), ctypes.c_float(thr),
            ctypes.c_int(cap), p(counts), p(num), p(regions)]
    (_launch or device_build.launch)(device, "segstream_mask_rle", (n, 1, 1), _THREADS, 0, args)
    return MaskRLE(counts, num, regions)


def compress_counts(counts: np.ndarray) -> str:
    """COCO's compressed RLE string (pycocotools' rleToString) of int32 counts [n] on the host."""
    counts = np.ascontiguousarray(counts, dtype=np.int32)
    capacity = 7 * max(len(counts), 1)  # at most 7 characters per count
    out = np.empty(capacity, dtype=np.uint8)
    length = host_build.library().segstream_rle_compress(counts.ctypes.data, len(counts), out.ctypes.data, capacity)
    return out[:length].tobytes().decode("ascii")
