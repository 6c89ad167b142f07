// Mask paste + threshold + full-frame COCO RLE: the per-pixel and per-column arithmetic, shared
// by the CUDA kernel (kernels.cu, one block per instance) and the CPU build (host.cpp).
//
// Paste, as segstream's postprocess (and torchvision's paste_masks_in_image) does it: the M x M
// probabilities padded by one zero cell, resized bilinearly (align_corners=False, torch's CPU
// index and weight arithmetic) onto the integer box grown by (M + 2) / M around its centre, and
// thresholded (`> threshold` in float32). Only the box region, clipped to the frame, can be 1.
//
// RLE: COCO's uncompressed counts of the full height x width frame in column-major order. They
// follow from the positions p (= x * height + y) where the value differs from the one before it
// (the value before position 0 is 0): counts = [p_0, p_1 - p_0, ..., height * width - p_last].
// Every such position lies in a region column, so each column is scanned on its own.
#pragma once
#include "portable.cuh"

struct SegPaste {
  int bx0, by0;      // top-left of the grown integer box (may be outside the frame)
  int out_w, out_h;  // size the padded mask is resized to
  int x0, y0, x1, y1;  // the region: grown box clipped to the frame, end exclusive (empty: x1 <= x0)
  int height, width;   // the frame
  float scale_x, scale_y;  // (M + 2) / out size, as torch computes the resize scale
};

// Truncation toward zero, as torch's float -> int64 conversion.
SEG_HD int seg_trunc(float v) { return (int)v; }

// box: x1, y1, x2, y2 in frame pixels (float32). grow: (M + 2) / M rounded to float32, as the
// postprocess multiplies a float32 tensor by the Python float.
SEG_HD SegPaste seg_paste_geometry(const float* box, int m, float grow, int height, int width) {
  SegPaste g;
  const float half_w = seg_mul(seg_mul(box[2] - box[0], 0.5f), grow);
  const float half_h = seg_mul(seg_mul(box[3] - box[1], 0.5f), grow);
  const float cx = seg_mul(box[2] + box[0], 0.5f);
  const float cy = seg_mul(box[3] + box[1], 0.5f);
  const int bx0 = seg_trunc(cx - half_w), by0 = seg_trunc(cy - half_h);
  const int bx1 = seg_trunc(cx + half_w), by1 = seg_trunc(cy + half_h);
  g.bx0 = bx0;
  g.by0 = by0;
  g.out_w = bx1 - bx0 + 1 > 1 ? bx1 - bx0 + 1 : 1;
  g.out_h = by1 - by0 + 1 > 1 ? by1 - by0 + 1 : 1;
  g.x0 = bx0 > 0 ? bx0 : 0;
  g.y0 = by0 > 0 ? by0 : 0;
  g.x1 = bx1 + 1 < width ? bx1 + 1 : width;
  g.y1 = by1 + 1 < height ? by1 + 1 : height;
  if (g.x1 <= g.x0 || g.y1 <= g.y0) g.x0 = g.y0 = g.x1 = g.y1 = 0;
  g.height = height;
  g.width = width;
  g.scale_x = (float)(m + 2) / (float)g.out_w;
  g.scale_y = (float)(m + 2) / (float)g.out_h;
  return g;
}

// torch's linear source index and weight (align_corners=False): src = max(scale * (dst + 0.5) - 0.5, 0),
// i0 = min(floor(src), size - 1), i1 = i0 + (i0 < size - 1), l1 = clamp(src - i0, 0, 1), l0 = 1 - l1.
SEG_HD void seg_linear_tap(float scale, int dst, int size, int* i0, int* i1, float* l0, float* l1) {
  float src = seg_mul(scale, (float)dst + 0.5f) - 0.5f;
  if (src < 0.0f) src = 0.0f;
  int lo = (int)floorf(src);
  if (lo > size - 1) lo = size - 1;
  *i0 = lo;
  *i1 = lo + (lo < size - 1 ? 1 : 0);
  float lambda = src - (float)lo;
  lambda = lambda < 0.0f ? 0.0f : (lambda > 1.0f ? 1.0f : lambda);
  *l1 = lambda;
  *l0 = 1.0f - lambda;
}

// A cell of the padded (M + 2) x (M + 2) mask.
SEG_HD float seg_padded_cell(const float* mask, int m, int row, int col) {
  row -= 1;
  col -= 1;
  return (row < 0 || row >= m || col < 0 || col >= m) ? 0.0f : mask[row * m + col];
}

// 1 when the pasted probability at frame pixel (x, y) of the region is above the threshold.
SEG_HD int seg_paste_pixel(const SegPaste& g, const float* mask, int m, float threshold, int x, int y) {
  const int size = m + 2;
  int r0, r1, c0, c1;
  float h0, h1, w0, w1;
  seg_linear_tap(g.scale_y, y - g.by0, size, &r0, &r1, &h0, &h1);
  seg_linear_tap(g.scale_x, x - g.bx0, size, &c0, &c1, &w0, &w1);
  const float top = seg_mul(seg_padded_cell(mask, m, r0, c0), w0) + seg_mul(seg_padded_cell(mask, m, r0, c1), w1);
  const float bottom = seg_mul(seg_padded_cell(mask, m, r1, c0), w0) + seg_mul(seg_padded_cell(mask, m, r1, c1), w1);
  const float value = seg_mul(top, h0) + seg_mul(bottom, h1);
  return value > threshold ? 1 : 0;
}

// Change positions of region column x (x0 <= x < x1), in order. Writes out[offset + k] for the
// k-th change while offset + k < cap (out may be null: count only); returns the number of changes.
SEG_HD int seg_paste_column(const SegPaste& g, const float* mask, int m, float threshold, int x,
                            int* out, long long offset, long long cap) {
  const long long base = (long long)x * g.height;
  int changes = 0;
  // The value before the column's first region pixel: 0 above the region, or (region touching
  // the top and the bottom of the frame) the previous region column's last pixel.
  int before = 0;
  if (g.y0 == 0 && g.y1 == g.height && x > g.x0)
    before = seg_paste_pixel(g, mask, m, threshold, x - 1, g.height - 1);
  for (int y = g.y0; y < g.y1; ++y) {
    const int v = seg_paste_pixel(g, mask, m, threshold, x, y);
    if (v != before) {
      if (out && offset + changes < cap) out[offset + changes] = (int)(base + y);
      ++changes;
      before = v;
    }
  }
  if (before) {  // back to 0 right after the region's last pixel of this column
    const bool next_column_continues = g.y1 == g.height && g.y0 == 0 && x + 1 < g.x1;
    const long long after = base + g.y1;
    if (!next_column_continues && after < (long long)g.height * g.width) {
      if (out && offset + changes < cap) out[offset + changes] = (int)after;
      ++changes;
    }
  }
  return changes;
}
