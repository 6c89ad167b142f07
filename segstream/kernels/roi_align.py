"""Multi-level RoIAlign over FPN maps in one pass, with torchvision's ``MultiScaleRoIAlign`` semantics."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

import torch

from segstream.kernels import device_build, host_build
from segstream.kernels.host_ops import level_range

MAX_LEVELS = 5
# Shared-memory tap table per CUDA block: 1024 taps * 32 B = 32 KiB (below the 48 KiB
# default limit); 14x14 bins x 2x2 samples = 784 taps fit. Bigger grids sample directly.
_TABLE_TAPS = 1024
_TAP_BYTES = 32
_THREADS = 256
# Outputs one CUDA block produces (its channel chunk x bins): enough work per block to
# amortise the tap table, enough blocks to fill the GPU.
_OUTPUTS_PER_BLOCK = 4096


def multilevel_roi_align(
    features: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    output_size: int,
    spatial_scales: Sequence[float],
    sampling_ratio: int = 2,
    aligned: bool = False,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    counts: torch.Tensor | None = None,
    *,
    _launch: Callable[..., None] | None = None,
) -> torch.Tensor:
    """RoIAlign of every box from the FPN level chosen for it, all levels in one launch.

    Args:
        features: L maps (1 <= L <= 5), each ``[B, C, H_l, W_l]`` (NCHW or channels-last memory), all float32 or all float16, on
            one device (CPU: the C++ build; CUDA: the NVRTC build on the current stream).
        boxes: ``[B, R, 4]`` float, ``(x1, y1, x2, y2)`` in input-image pixels (the frame the
            spatial scales map from). Computed in float32.
        output_size: bins per side of the output.
        spatial_scales: L floats, map pixels per image pixel (e.g. 1/4, 1/8, 1/16, 1/32); the
            level range is ``k_min = -log2(scales[0])``, ``k_max = -log2(scales[-1])`` as
            torchvision infers it.
        sampling_ratio: sampling points per bin side; <= 0 means adaptive
            (``ceil(roi_size / output_size)``), as in ``torchvision.ops.roi_align``.
        aligned: shift boxes by -0.5 map pixel (Detectron2); torchvision's
            ``MultiScaleRoIAlign`` uses False.
        canonical_scale, canonical_level: the level rule,
            ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)`` in float32,
            clamped to ``[k_min, k_max]``. With one map every box uses it.
        counts: optional int ``[B]``: rows ``r >= counts[b]`` are padding.

    Returns:
        ``[B, R, C, output_size, output_size]`` in the features' dtype. Padding rows, and boxes
        whose level is undefined (NaN area: exactly one side inverted, which torchvision
        leaves at zero too), are zero.

    ``_launch`` (tests only) replaces the CUDA launcher and forces the CUDA path.
    """
    features = list(features)
    num_levels = len(features)
    if not 1 <= num_levels <= MAX_LEVELS:
        raise ValueError(f"need 1..{MAX_LEVELS} feature maps, got {num_levels}")
    if len(spatial_scales) != num_levels:
        raise ValueError(f"{num_levels} feature maps but {len(spatial_scales)} spatial scales")
    first = features[0]
    dtype, device = first.dtype, first.device
    if dtype not in (torch.float32, torch.float16):
        raise TypeError(f"features must be float32 or float16, not {dtype}")
    if first.dim() != 4:
        raise ValueError(f"feature maps must be [B, C, H, W], got {tuple(first.shape)}")
    images, channels = first.shape[0], first.shape[1]
    for f in features:
        if f.dtype != dtype or f.device != device:
            raise ValueError("all feature maps must share dtype and device")
        if f.dim() != 4 or f.shape[0] != images or f.shape[1] != channels:
            raise ValueError(f"feature map {tuple(f.shape)} does not match [B={images}, C={channels}, H, W]")
        if f.shape[2] < 1 or f.shape[3] < 1:
            raise ValueError(f"empty feature map {tuple(f.shape)}")
    if boxes.dim() != 3 or boxes.shape[0] != images or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be [B={images}, R, 4], got {tuple(boxes.shape)}")
    if output_size < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size}")
    if counts is not None and tuple(counts.shape) != (images,):
        raise ValueError(f"counts must be [B={images}], got {tuple(counts.shape)}")

    rois = boxes.shape[1]
    k_min, k_max = level_range(spatial_scales)
    out = torch.empty((images, rois, channels, output_size, output_size), dtype=dtype, device=device)
    if out.numel() == 0:
        return out
    # Channels-last maps (e.g. the OpenVINO engine's) are pooled as they are on a CPU: its NHWC loop
    # reads a tap's channels contiguously (several times faster, same results). Otherwise NCHW.
    nhwc = device.type == "cpu" and _launch is None and _channels_last(features)
    maps = features if nhwc else [f.contiguous() for f in features]
    boxes32 = boxes.to(device=device, dtype=torch.float32).contiguous()
    counts32 = None if counts is None else counts.to(device=device, dtype=torch.int32).contiguous()
    padded = maps + [maps[0]] * (MAX_LEVELS - num_levels)  # unused slots: any valid pointer
    heights = [int(m.shape[2]) for m in padded]
    widths = [int(m.shape[3]) for m in padded]
    scales = [float(s) for s in spatial_scales] + [1.0] * (MAX_LEVELS - num_levels)
    suffix = "f32" if dtype == torch.float32 else "f16"
    p = device_build.pointer

    if device.type == "cpu" and _launch is None:
        lib = host_build.library()
        fn = getattr(lib, f"segstream_multilevel_roi_align_{'nhwc_' if nhwc else ''}{suffix}")
        fn(
            *[m.data_ptr() for m in padded], boxes32.data_ptr(), p(counts32),
            images, rois, channels, num_levels,
            (ctypes.c_int * MAX_LEVELS)(*heights), (ctypes.c_int * MAX_LEVELS)(*widths),
            (ctypes.c_float * MAX_LEVELS)(*scales),
            k_min, k_max, float(canonical_scale), float(canonical_level),
            output_size, sampling_ratio, int(aligned), out.data_ptr(), torch.get_num_threads(),
        )
        return out
    if device.type != "cuda" and _launch is None:
        raise ValueError(f"unsupported device {device}")

    bins = output_size * output_size
    channels_per_block = max(1, min(channels, -(-_OUTPUTS_PER_BLOCK // bins)))
    table = bins * sampling_ratio * sampling_ratio if sampling_ratio > 0 else 0
    table_taps = table if 0 < table <= _TABLE_TAPS else -1  # -1: no box uses the table
    sizes = [v for hw in zip(heights, widths) for v in hw]
    args = [
        *[p(m) for m in padded], p(boxes32), p(counts32),
        ctypes.c_int(rois), ctypes.c_int(channels), ctypes.c_int(num_levels),
        *[ctypes.c_int(v) for v in sizes], *[ctypes.c_float(s) for s in scales],
        ctypes.c_int(k_min), ctypes.c_int(k_max),
        ctypes.c_float(canonical_scale), ctypes.c_float(canonical_level),
        ctypes.c_int(output_size), ctypes.c_int(sampling_ratio), ctypes.c_int(int(aligned)),
        ctypes.c_int(channels_per_block), ctypes.c_int(table_taps), p(out),
    ]
    grid = (images * rois, -(-channels // channels_per_block), 1)
    shared = max(table_taps, 0) * _TAP_BYTES
    (_launch or device_build.launch)(device, f"segstream_multilevel_roi_align_{suffix}", grid, _THREADS, shared, args)
    return out


def _channels_last(features: list[torch.Tensor]) -> bool:
    """Every map is laid out [B, H, W, C] in memory (and one is not also plain NCHW-contiguous)."""
    return all(f.is_contiguous(memory_format=torch.channels_last) for f in features) and not all(
        f.is_contiguous() for f in features
    )
