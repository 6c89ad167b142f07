// Multi-level RoIAlign: the per-box and per-sample arithmetic, shared by the
// CUDA kernel (kernels.cu) and the CPU build (host.cpp). It follows
// torchvision's MultiScaleRoIAlign / roi_align operation by operation, so that
// the CPU build reproduces torchvision's CPU results to the last bit where the
// summation order allows it.
#pragma once
#include "portable.cuh"

// Feature maps one launch takes: P2..P6 at most.
#define SEG_ROI_MAX_LEVELS 5

// The FPN level a box is pooled from (eq. 1 of the FPN paper as torchvision's
// LevelMapper computes it in float32), as an index into the maps: level k maps
// to k - k_min. Returns -1 where torchvision's level is NaN (a negative area:
// exactly one of the sides is inverted): torchvision matches such a box with
// no level and leaves its output zero.
SEG_HD int roi_pyramid_level(float x1, float y1, float x2, float y2, int k_min,
                             int k_max, float canonical_scale,
                             float canonical_level) {
  const float area = seg_mul(x2 - x1, y2 - y1);
  const float side = sqrtf(area);
#if defined(__CUDA_ARCH__)
  // torch's CUDA division by a Python scalar multiplies by the float
  // reciprocal (BinaryDivTrueKernel.cu); its CPU division divides. The two
  // differ in the last bit, which moves boxes that sit on a level boundary.
  const float ratio = seg_mul(side, __fdiv_rn(1.0f, canonical_scale));
#else
  const float ratio = side / canonical_scale;
#endif
  const float level = floorf((canonical_level + log2f(ratio)) + 1e-6f);
  if (level != level) return -1;
  const float clamped = level < (float)k_min   ? (float)k_min
                        : level > (float)k_max ? (float)k_max
                                               : level;
  return (int)clamped - k_min;
}

// Level index for row `row` of an image with `valid_rows` rows, or -1 when the
// row is padding or has no level. One map: every box goes to it, like
// torchvision's single-map shortcut (no level rule at all).
SEG_HD int roi_assigned_level(const float* box, int row, int valid_rows,
                              int num_levels, int k_min, int k_max,
                              float canonical_scale, float canonical_level) {
  if (row >= valid_rows) return -1;
  if (num_levels == 1) return 0;
  const int level = roi_pyramid_level(box[0], box[1], box[2], box[3], k_min,
                                      k_max, canonical_scale, canonical_level);
  return level < num_levels ? level : -1;
}

// A box in the coordinates of one feature map, split into bins.
struct RoiWindow {
  float start_h, start_w;
  float bin_h, bin_w;
  int grid_h, grid_w;  // sampling points per bin along y and x
  int samples;         // points summed per bin: 0 when a grid side is <= 0
  float count;         // divisor of the bin average (never below 1)
};

SEG_HD RoiWindow roi_window(const float* box, float spatial_scale, int aligned,
                            int pooled, int sampling_ratio) {
  RoiWindow w;
  const float offset = aligned ? 0.5f : 0.0f;
  w.start_w = box[0] * spatial_scale - offset;
  w.start_h = box[1] * spatial_scale - offset;
  const float end_w = box[2] * spatial_scale - offset;
  const float end_h = box[3] * spatial_scale - offset;
  float roi_w = end_w - w.start_w;
  float roi_h = end_h - w.start_h;
  if (!aligned) {
    // Legacy mode forces malformed boxes to at least one map pixel.
    roi_w = seg_std_max(roi_w, 1.0f);
    roi_h = seg_std_max(roi_h, 1.0f);
  }
  w.bin_h = roi_h / (float)pooled;
  w.bin_w = roi_w / (float)pooled;
  w.grid_h = sampling_ratio > 0 ? sampling_ratio : (int)ceilf(roi_h / (float)pooled);
  w.grid_w = sampling_ratio > 0 ? sampling_ratio : (int)ceilf(roi_w / (float)pooled);
  // torchvision loops `iy < grid_h`, `ix < grid_w`: a non-positive side (an
  // inverted box with aligned=True) sums nothing, yet divides by max(h*w, 1).
  const int product = w.grid_h * w.grid_w;
  w.samples = (w.grid_h > 0 && w.grid_w > 0) ? product : 0;
  w.count = (float)(product > 1 ? product : 1);
  return w;
}

// Position of sampling point `sub` of bin `bin` along one axis.
SEG_HD float roi_sample_coord(float start, int bin, float bin_size, int sub,
                              int grid) {
  return start + bin * bin_size + (float)(sub + .5f) * bin_size / (float)grid;
}

// The four neighbours of a sampling point and their bilinear weights; offsets
// are within one H*W plane. Points more than one pixel outside the map get
// zero weights.
// 16-byte aligned so the CUDA kernel reads a tap from shared memory with two
// vector loads.
struct alignas(16) BilinearTap {
  int o1, o2, o3, o4;
  float w1, w2, w3, w4;
};

SEG_HD BilinearTap bilinear_tap(float y, float x, int height, int width) {
  BilinearTap t;
  if (y < -1.0f || y > (float)height || x < -1.0f || x > (float)width) {
    t.o1 = t.o2 = t.o3 = t.o4 = 0;
    t.w1 = t.w2 = t.w3 = t.w4 = 0.0f;
    return t;
  }
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  int y_low = (int)y;
  int x_low = (int)x;
  int y_high, x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = (float)y_low;
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = (float)x_low;
  } else {
    x_high = x_low + 1;
  }
  const float ly = y - y_low;
  const float lx = x - x_low;
  const float hy = 1.0f - ly;
  const float hx = 1.0f - lx;
  t.w1 = hy * hx;
  t.w2 = hy * lx;
  t.w3 = ly * hx;
  t.w4 = ly * lx;
  t.o1 = y_low * width + x_low;
  t.o2 = y_low * width + x_high;
  t.o3 = y_high * width + x_low;
  t.o4 = y_high * width + x_high;
  return t;
}

// Sampling point `index` of a window, numbered bin-major (ph, pw) then
// (iy, ix): the order in which torchvision sums a bin.
SEG_HD BilinearTap roi_window_tap(const RoiWindow& w, int index, int pooled,
                                  int height, int width) {
  const int per_bin = w.samples;
  const int bin = index / per_bin;
  const int sub = index - bin * per_bin;
  const int ph = bin / pooled;
  const int pw = bin - ph * pooled;
  const int iy = sub / w.grid_w;
  const int ix = sub - iy * w.grid_w;
  const float y = roi_sample_coord(w.start_h, ph, w.bin_h, iy, w.grid_h);
  const float x = roi_sample_coord(w.start_w, pw, w.bin_w, ix, w.grid_w);
  return bilinear_tap(y, x, height, width);
}

template <typename T>
SEG_HD float bilinear_read(const T* plane, const BilinearTap& t) {
  return t.w1 * seg_to_float(plane[t.o1]) + t.w2 * seg_to_float(plane[t.o2]) +
         t.w3 * seg_to_float(plane[t.o3]) + t.w4 * seg_to_float(plane[t.o4]);
}

// One output bin from precomputed taps (taps of this bin only, in order).
template <typename T>
SEG_HD float roi_bin_from_taps(const T* plane, const BilinearTap* taps,
                               int per_bin, float count) {
  float acc = 0.0f;
  for (int k = 0; k < per_bin; ++k) acc += bilinear_read(plane, taps[k]);
  return acc / count;
}

// One output bin computing its taps on the fly (adaptive sampling, or more
// taps than a table holds).
template <typename T>
SEG_HD float roi_bin_direct(const T* plane, const RoiWindow& w, int bin,
                            int pooled, int height, int width) {
  const int per_bin = w.samples;
  float acc = 0.0f;
  for (int k = 0; k < per_bin; ++k)
    acc += bilinear_read(plane, roi_window_tap(w, bin * per_bin + k, pooled, height, width));
  return acc / w.count;
}
