"""Bilinear resampling on the host in numpy, with torch's semantics, for the torch-free path.

`F.interpolate(x, size, mode="bilinear", align_corners=False)` (what torchvision's
GeneralizedRCNNTransform resizes with and what its `paste_masks_in_image` pastes with) is
separable: each output row mixes two input rows and each output column two input columns, with
weights that depend only on the axis' input and output lengths. `axis_taps` computes those taps
exactly as ATen's CPU kernel does (float32: scale = in / out, source index
`scale * (i + 0.5) - 0.5` rounded once, clamped at 0, floor, the second tap clamped to the last
input index; identical weights to torch's on x86, checked in tests/pipeline/test_masks.py),
and the resamplers below apply them in ATen's order (columns inside, rows outside:
`wy0 * (wx0 * a + wx1 * b) + wy1 * (wx0 * c + wx1 * d)`), so results equal torch's up to the
rounding of a fused multiply-add that torch's vectorised build may use in the sums (an ulp; the
tests compare thresholded masks pixel for pixel).

Only the output rows and columns asked for are computed: pasting a 28x28 mask into a box
touches the part of the box inside the frame, never a frame-sized array. The paste's column pass
is numpy on the small [m, width] array; its row pass, the one over the whole region, is one C
loop (`segstream_paste_rows`, kernels/csrc/host.cpp) writing the thresholded bytes directly.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Callable

import numpy as np

_HALF = np.float32(0.5)
_ONE = np.float32(1.0)


def axis_taps(in_size: int, out_size: int, start: int = 0, stop: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Taps of output indices [start, stop) of a length in_size -> out_size bilinear resize.

    Returns (i0, i1, w0, w1): int64 [n] input indices and float32 [n] weights, out[j] =
    w0[j] * in[i0[j]] + w1[j] * in[i1[j]] (align_corners=False, as torch).
    """
    stop = out_size if stop is None else stop
    dst = np.arange(start, stop, dtype=np.int64)
    if in_size == out_size:  # ATen's identity case: one tap of weight 1
        return dst, dst, np.ones(dst.shape, np.float32), np.zeros(dst.shape, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    # ATen's x86 build computes `scale * (i + 0.5) - 0.5` with one fused multiply-add (one
    # rounding): the exact product of two float32 fits a float64, so this is that rounding.
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    np.maximum(src, np.float32(0), out=src)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), _ONE)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, _ONE - w1, w1


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [h0, w0, C] -> float32 [height, width, C], bilinear (torch's align_corners=False)."""
    h0, w0 = image.shape[:2]
    x0, x1, wx0, wx1 = axis_taps(w0, width)
    y0, y1, wy0, wy1 = axis_taps(h0, height)
    rows = np.union1d(y0, y1)  # only the input rows some output row reads
    at = np.full(h0, -1, dtype=np.int64)
    at[rows] = np.arange(len(rows))
    picked = image[rows]
    cols = picked[:, x0] * wx0[None, :, None]
    cols += picked[:, x1] * wx1[None, :, None]
    out = cols[at[y0]] * wy0[:, None, None]
    out += cols[at[y1]] * wy1[:, None, None]
    return out


def paste_mask(mask: np.ndarray, box: tuple[int, int, int, int], clip: tuple[int, int, int, int],
               threshold: float) -> np.ndarray:
    """Threshold a mask resized onto an integer box, computing only the part of the box in `clip`.

    mask: float32 [m, n] (the padded 30x30 probabilities); box: (bx0, by0, bx1, by1) inclusive
    frame pixels of the resized mask (its size is (by1 - by0 + 1) x (bx1 - bx0 + 1), at least 1);
    clip: (x0, y0, x1, y1) end-exclusive frame pixels inside the box. Returns bool [y1 - y0, x1 - x0]:
    resized > threshold.
    """
    bx0, by0, bx1, by1 = box
    x0, y0, x1, y1 = clip
    m, n = mask.shape
    cx0, cx1, wx0, wx1 = axis_taps(n, max(bx1 - bx0 + 1, 1), x0 - bx0, x1 - bx0)
    cy0, cy1, wy0, wy1 = axis_taps(m, max(by1 - by0 + 1, 1), y0 - by0, y1 - by0)
    cols = mask[:, cx0] * wx0  # [m, x1 - x0]: every input row, the clipped output columns
    cols += mask[:, cx1] * wx1
    rows_pass = _paste_rows()
    if rows_pass is None:  # numpy: four passes over the region and two temporaries
        out = cols[cy0] * wy0[:, None]
        out += cols[cy1] * wy1[:, None]
        return out > np.float32(threshold)
    cols = np.ascontiguousarray(cols)  # fancy indexing on axis 1 may leave it column-major
    region = np.empty((len(cy0), cols.shape[1]), dtype=np.uint8)
    rows_pass(cols.ctypes.data, cols.shape[1], cy0.ctypes.data, cy1.ctypes.data, wy0.ctypes.data,
              wy1.ctypes.data, len(cy0), float(threshold), region.ctypes.data, region.shape[1])
    return region.view(bool)


_rows_lock = threading.Lock()
_rows: list[Callable[..., None] | None] = []


def _paste_rows() -> Callable[..., None] | None:
    """The C row pass (`segstream_paste_rows` in kernels/csrc/host.cpp: one pass over the region,
    the same float32 arithmetic as numpy's), or None where the CPU library lacks it."""
    if not _rows:
        with _rows_lock:
            if not _rows:
                from segstream.kernels.host_build import library

                fn = getattr(library(), "segstream_paste_rows", None)
                if fn is not None:
                    p, i64, f32 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_float
                    fn.argtypes = [p, i64, p, p, p, p, i64, f32, p, i64]
                    fn.restype = None
                _rows.append(fn)
    return _rows[0]
