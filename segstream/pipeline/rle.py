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
    Cost is that of the region, not the frame: each run of ones lies inside one region column (or
    the region spans every row, where frame and region order the pixels alike), so its position
    maps linearly into the region (benchmarks/regions_from_counts.py: ~3x faster than pasting
    and encoding the same masks on the CPU).
    """
    x0, y0, x1, y1 = region_box
    rows, cols = y1 - y0, x1 - x0
    if rows <= 0 or cols <= 0:
        return np.zeros((0, 0), dtype=bool)
    runs = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(runs)
    starts, ends = (ends - runs)[1::2], ends[1::2]  # runs of ones
    column = starts // height
    top, bottom = starts - column * height, ends - column * height  # rows within the start's column
    outside = (ends > starts) & ((column < x0) | (ends > x1 * height) | (top < y0)
                                 | ((bottom > y1) & (rows != height)))  # a full-height region runs on
    if outside.any():
        raise ValueError(f"counts have ones outside region {region_box} of a frame {height} rows high")
    # frame position p in column x -> region position (x - x0) * rows + (p - x * height - y0)
    first = starts - column * (height - rows) - x0 * rows - y0
    bounds = np.empty(2 * len(first) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, rows * cols
    bounds[1:-1:2], bounds[2:-1:2] = first, first + (ends - starts)
    values = np.zeros(len(bounds) - 1, dtype=bool)
    values[1::2] = True
    # Runs are in order, so the gaps between them are the zeros (of length 0 where a run ends at
    # one region column's bottom and the next starts at the following column's top).
    return np.repeat(values, np.diff(bounds)).reshape(cols, rows).T
