"""COCO run-length encoding computed from a mask's box region only.

A full-frame mask that is zero outside a box needs no scan of the whole frame: in column-major
order the columns left and right of the box are zero runs, and inside each box column the rows
above and below are zeros too. So the runs follow from the box region alone, and the result is
byte-identical to `pycocotools.mask.encode` on the full frame.
"""

from __future__ import annotations

import numpy as np

_CHUNKS = 7  # 5-bit groups needed for any count of a frame up to 2**34 pixels


def region_counts(region: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """Uncompressed COCO counts of a height×width mask that is `region` at (x0, y0), zero elsewhere.

    region: bool or uint8 [h, w], fully inside the frame (0 <= x0, x0 + w <= width, same for y).
    Returns int64 [n]: alternating run lengths starting with zeros, in column-major pixel order.
    """
    h, w = region.shape
    total = height * width
    if h == 0 or w == 0:
        return np.array([total], dtype=np.int64)
    pad_top = 1 if y0 > 0 else 0
    pad_bottom = 1 if y0 + h < height else 0
    # One zero row above/below each column keeps runs from joining across the column gap,
    # which is all zeros in the full frame whenever the box does not span the full height.
    block = np.zeros((w, h + pad_top + pad_bottom), dtype=np.int8)
    block[:, pad_top : pad_top + h] = region.T
    flat = block.ravel()
    changes = np.flatnonzero(np.diff(flat, prepend=np.int8(0), append=np.int8(0)))
    if changes.size == 0:
        return np.array([total], dtype=np.int64)
    # A change at block index i (column c, row r > 0 of the block) sits at frame pixel
    # (x0 + c) * height + (y0 - pad_top + r). A change at r == 0 is between two columns: a rise
    # there starts at frame row 0 (no top pad), a fall ends a run that reached the frame's
    # bottom (no bottom pad); either way it sits at the top of frame column x0 + c.
    rows = block.shape[1]
    col, row = np.divmod(changes.astype(np.int64), rows)
    positions = (x0 + col) * height + np.where(row > 0, y0 - pad_top + row, 0)
    bounds = np.concatenate(([0], positions, [total]))
    counts = np.diff(bounds)
    if counts[-1] == 0:  # the mask ends on a one-run: COCO writes no trailing zero run
        counts = counts[:-1]
    return counts


def compress_counts(counts: np.ndarray) -> str:
    """COCO's compressed string for uncompressed counts (as pycocotools' rleToString)."""
    x = np.asarray(counts, dtype=np.int64).copy()
    if x.size > 3:
        x[3:] -= np.asarray(counts, dtype=np.int64)[1:-2]
    shifts = 5 * np.arange(_CHUNKS, dtype=np.int64)
    chunk = (x[:, None] >> shifts) & 0x1F
    rest = x[:, None] >> (shifts + 5)
    more = np.where((chunk & 0x10) != 0, rest != -1, rest != 0)
    # A group is written while every earlier group said "more".
    written = np.ones_like(more)
    written[:, 1:] = np.cumprod(more[:, :-1], axis=1).astype(bool)
    chars = (chunk | (more.astype(np.int64) << 5)) + 48
    return chars[written].astype(np.uint8).tobytes().decode("ascii")


def encode_region(region: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """COCO compressed RLE {"size": [height, width], "counts": str} of a box-region mask."""
    return {"size": [height, width], "counts": compress_counts(region_counts(region, x0, y0, height, width))}
