// COCO run-length encoding of a full-frame mask that is zero outside one box (CPU only).
//
// In column-major order the frame columns left and right of the box are zero runs, and in
// each box column the rows above and below the box are zeros too, so the runs follow from
// the box region alone: the cost is the box area, not the frame area. The output is
// byte-identical to pycocotools' rleEncode + rleToString on the full frame.
//
// The region arrives row-major (as the pasted mask is computed); runs are column-major.
// Rather than walking columns with a stride, rows are compared eight pixels at a time and
// the few vertical changes found are bucketed by column.
#pragma once

#include <stdint.h>
#include <string.h>

struct seg_rle_cursor {
  long long last;   // frame pixel where the current run started
  long long n;      // counts produced so far (may exceed cap: the caller retries)
  long long cap;
  long long* counts;
};

static inline void seg_rle_cut(seg_rle_cursor* k, long long position) {
  if (k->n < k->cap) k->counts[k->n] = position - k->last;
  k->n += 1;
  k->last = position;
}

// Calls visit(row, column) for every pixel of rows 1..h-1 that differs from the pixel above.
template <typename Visit>
static inline void seg_rle_vertical_changes(const unsigned char* region, long long h, long long w,
                                            long long row_stride, Visit visit) {
  for (long long r = 1; r < h; ++r) {
    const unsigned char* above = region + (r - 1) * row_stride;
    const unsigned char* row = region + r * row_stride;
    long long c = 0;
    for (; c + 8 <= w; c += 8) {
      uint64_t a, b;
      memcpy(&a, above + c, 8);
      memcpy(&b, row + c, 8);
      uint64_t x = a ^ b;
      while (x) {
        visit(r, c + (__builtin_ctzll(x) >> 3));
        x &= x - 1;
      }
    }
    for (; c < w; ++c)
      if ((above[c] != 0) != (row[c] != 0)) visit(r, c);
  }
}

// Uncompressed counts of the height x width mask that is `region` (uint8 0/1 [h, w], rows
// `row_stride` bytes apart) at columns x0.., rows y0.., zero elsewhere. `starts` ([w + 1])
// and `rows` ([vertical changes]) are scratch. Writes at most `cap` counts; returns how many.
static long long seg_rle_region_counts(const unsigned char* region, long long h, long long w,
                                       long long row_stride, long long x0, long long y0,
                                       long long height, long long width, long long* counts,
                                       long long cap, int* starts, int** rows_out) {
  for (long long c = 0; c <= w; ++c) starts[c] = 0;
  long long changes = 0;
  seg_rle_vertical_changes(region, h, w, row_stride, [&](long long, long long c) {
    starts[c + 1] += 1;
    ++changes;
  });
  for (long long c = 0; c < w; ++c) starts[c + 1] += starts[c];
  int* rows = new int[changes > 0 ? changes : 1];
  int* fill = new int[w > 0 ? w : 1];
  for (long long c = 0; c < w; ++c) fill[c] = starts[c];
  seg_rle_vertical_changes(region, h, w, row_stride, [&](long long r, long long c) { rows[fill[c]++] = (int)r; });
  delete[] fill;

  seg_rle_cursor k{0, 0, cap, counts};
  int value = 0;
  const bool zeros_above = y0 > 0, zeros_below = y0 + h < height;
  const unsigned char* top_row = region;
  for (long long c = 0; c < w && h > 0; ++c) {
    const long long top = (x0 + c) * height + y0;
    if (zeros_above && value) {
      seg_rle_cut(&k, top - y0);
      value = 0;
    }
    if ((top_row[c] != 0) != value) {
      seg_rle_cut(&k, top);
      value = !value;
    }
    for (int i = starts[c]; i < starts[c + 1]; ++i) {
      seg_rle_cut(&k, top + rows[i]);
      value = !value;
    }
    if (zeros_below && value) {
      seg_rle_cut(&k, top + h);
      value = 0;
    }
  }
  if (value && x0 + w < width) seg_rle_cut(&k, (x0 + w) * height);
  seg_rle_cut(&k, height * width);  // the final run, of either value
  *rows_out = rows;
  return k.n;
}

// COCO's compressed string of `counts` (pycocotools' rleToString): each count, after the
// first three as a difference to the count two before, in 5-bit groups offset by 48.
// Writes at most `cap` chars (no terminator); returns the full length. Counts of any integer type.
template <typename Count>
static long long seg_rle_compress(const Count* counts, long long n, char* out, long long cap) {
  long long length = 0;
  for (long long i = 0; i < n; ++i) {
    long long x = counts[i];
    if (i > 2) x -= counts[i - 2];
    bool more = true;
    while (more) {
      long long c = x & 0x1f;
      x >>= 5;  // arithmetic shift: negative differences end on x == -1
      more = (c & 0x10) ? x != -1 : x != 0;
      if (more) c |= 0x20;
      if (length < cap) out[length] = (char)(c + 48);
      ++length;
    }
  }
  return length;
}

// One call per mask: counts into `counts` (cap), string into `out` (out_cap).
// Returns the string length, or -(counts needed) when `counts` was too small.
static long long seg_rle_encode_region(const unsigned char* region, long long h, long long w, long long row_stride,
                                       long long x0, long long y0, long long height, long long width,
                                       long long* counts, long long cap, char* out, long long out_cap) {
  int* starts = new int[w + 1];
  int* rows = nullptr;
  const long long n = seg_rle_region_counts(region, h, w, row_stride, x0, y0, height, width, counts, cap, starts, &rows);
  delete[] starts;
  delete[] rows;
  if (n > cap) return -n;
  return seg_rle_compress(counts, n, out, out_cap);
}

// The inverse for such masks: the box region (x0, y0)-(x1, y1) (end exclusive) of a full-frame
// mask given as COCO's uncompressed counts (column-major runs of a `height`-row frame, starting
// with zeros), written column-major into out [x1 - x0][y1 - y0] as 0/1 bytes: the order the runs
// come in, so each run is one memset per column it covers. Returns 0, or -1 when a run of ones
// falls outside the region (counts not made from such a mask).
static inline int seg_rle_decode_region(const int* counts, long long n, long long x0, long long y0,
                                        long long x1, long long y1, long long height, unsigned char* out) {
  const long long rows = y1 - y0;
  memset(out, 0, (size_t)(rows * (x1 - x0)));
  long long position = 0;
  for (long long k = 0; k < n; ++k) {
    const long long start = position;
    position += counts[k];
    if ((k & 1) == 0) continue;  // a run of zeros
    for (long long p = start; p < position;) {  // the run's part in each column it covers
      const long long x = p / height, top = p - x * height;
      const long long end = position < (x + 1) * height ? position : (x + 1) * height;
      const long long bottom = end - x * height;
      if (x < x0 || x >= x1 || top < y0 || bottom > y1) return -1;
      memset(out + (x - x0) * rows + (top - y0), 1, (size_t)(bottom - top));
      p = end;
    }
  }
  return 0;
}
