"""COCO run-length encoding computed from a mask's box region only.

A full-frame mask that is zero outside a box needs no scan of the whole frame: in column-major
order the columns left and right of the box are zero runs, and inside each box column the rows
above and below are zeros too. So the runs follow from the box region alone, and the result is
byte-identical to `pycocotools.mask.encode` on the full frame. The scan itself is C
(`segstream/kernels/csrc/rle.h`, in the kernels' CPU library): it compares rows eight pixels
at a time, so its cost is a fraction of a nanosecond per box pixel.
"""

from __future__ import annotations

import threading

import numpy as np

from segstream.kernels.host_build import library

_scratch = threading.local()


def _buffers(counts: int) -> tuple[np.ndarray, int, int, np.ndarray, int, int]:
    """Per-thread scratch: (counts, its address, its size, chars, its address, its size)."""
    have = getattr(_scratch, "buffers", None)
    if have is None or have[2] < counts:
        count_array = np.empty(max(counts, 4096), dtype=np.int64)
        char_array = np.empty(7 * count_array.size, dtype=np.uint8)  # <= 7 chars per count
        have = _scratch.buffers = (count_array, count_array.ctypes.data, count_array.size,
                                   char_array, char_array.ctypes.data, char_array.size)
    return have


def encode_region(region: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """COCO compressed RLE {"size": [height, width], "counts": str} of a box-region mask.

    region: bool or uint8 (0/1) [h, w], rows contiguous, placed at column x0 / row y0 of a
        height x width frame and fully inside it; the frame is zero elsewhere.
    """
    h, w = region.shape
    if h == 0 or w == 0:
        region, h, w = np.zeros((1, 1), dtype=np.uint8), 0, 0
    if region.dtype not in (np.bool_, np.uint8) or region.strides[1] != 1:
        region = np.ascontiguousarray(region, dtype=np.uint8)
    if not (0 <= x0 and x0 + w <= width and 0 <= y0 and y0 + h <= height):
        raise ValueError(f"region {w}x{h} at ({x0}, {y0}) is not inside a {width}x{height} frame")
    encode = library().segstream_rle_encode_region
    _, counts, n_counts, chars, chars_at, n_chars = _buffers(2 * w + 8)
    args = (region.ctypes.data, h, w, region.strides[0], x0, y0, height, width)
    n = encode(*args, counts, n_counts, chars_at, n_chars)
    if n < 0:  # a ragged mask: more runs than the usual two per column
        _, counts, n_counts, chars, chars_at, n_chars = _buffers(-n)
        n = encode(*args, counts, n_counts, chars_at, n_chars)
    return {"size": [height, width], "counts": chars[:n].tobytes().decode("ascii")}


def region_from_counts(counts: np.ndarray, region_box: tuple[int, int, int, int], height: int) -> np.ndarray:
    """The box region of a full-frame mask given as COCO's uncompressed counts: the inverse of
    `encode_region` for masks that are zero outside the region (as pasted masks are).

    counts: int [n] column-major runs of a height x width frame, starting with a run of zeros.
    region_box: (x0, y0, x1, y1) frame pixels, end exclusive. Returns bool [y1 - y0, x1 - x0], a
    transposed view of a column-major buffer (the order the runs come in; no copy to rows).
    Cost is that of the region, not the frame: each run of ones is one memset per column it
    covers (C, `seg_rle_decode_region` in csrc/rle.h; benchmarks/regions_from_counts.py).
    Raises ValueError when a run of ones lies outside the region.
    """
    x0, y0, x1, y1 = region_box
    rows, cols = y1 - y0, x1 - x0
    if rows <= 0 or cols <= 0:
        return np.zeros((0, 0), dtype=bool)
    runs = np.ascontiguousarray(counts, dtype=np.int32)
    out = np.empty((cols, rows), dtype=np.uint8)
    if library().segstream_rle_decode_region(runs.ctypes.data, len(runs), x0, y0, x1, y1, height, out.ctypes.data):
        raise ValueError(f"counts have ones outside region {region_box} of a frame {height} rows high")
    return out.view(bool).T
