// CPU build: the same per-element functions as the CUDA kernels, called in
// loops. Compiled with the system C++ compiler (-ffp-contract=off, no fast
// math) into a shared library that Python loads with ctypes.
#include <algorithm>
#include <thread>
#include <type_traits>
#include <vector>

#include "mask_rle.cuh"
#include "nms.cuh"
#include "rle.h"
#include "roi_align.cuh"

namespace {

// Runs fn(begin, end) over [0, n) on up to `threads` threads.
template <typename Fn>
void parallel_ranges(long long n, int threads, Fn fn) {
  if (n <= 0) return;
  const long long workers = std::max(1LL, std::min<long long>(threads, n));
  if (workers == 1) {
    fn(0LL, n);
    return;
  }
  std::vector<std::thread> pool;
  const long long step = (n + workers - 1) / workers;
  for (long long begin = 0; begin < n; begin += step)
    pool.emplace_back(fn, begin, std::min(n, begin + step));
  for (auto& t : pool) t.join();
}

// Every tap of a window in roi_window_tap's order (bin-major, then iy, ix),
// with the same coordinates: nested loops instead of its per-tap index
// divisions (which cost more than the taps' reads on a CPU).
inline void window_taps(const RoiWindow& w, int pooled, int height, int width,
                        std::vector<BilinearTap>& taps) {
  taps.resize((size_t)pooled * pooled * w.samples);
  if (w.samples == 0) return;
  size_t i = 0;
  for (int ph = 0; ph < pooled; ++ph)
    for (int pw = 0; pw < pooled; ++pw)
      for (int iy = 0; iy < w.grid_h; ++iy) {
        const float y = roi_sample_coord(w.start_h, ph, w.bin_h, iy, w.grid_h);
        for (int ix = 0; ix < w.grid_w; ++ix)
          taps[i++] = bilinear_tap(y, roi_sample_coord(w.start_w, pw, w.bin_w, ix, w.grid_w), height, width);
      }
}


// One bin's taps summed into acc[0..channels) from channels-last maps, each
// channel as roi_bin_from_taps sums it (four products left to right, taps in
// order). Always inlined, so the loop is compiled with its caller's target.
template <typename T>
__attribute__((always_inline)) inline void sum_taps_nhwc(float* __restrict__ acc, const T* __restrict__ base,
                                                         const BilinearTap* __restrict__ taps, int samples,
                                                         int channels) {
  for (int k = 0; k < samples; ++k) {
    const BilinearTap& t = taps[k];
    const T* p1 = base + (long long)t.o1 * channels;
    const T* p2 = base + (long long)t.o2 * channels;
    const T* p3 = base + (long long)t.o3 * channels;
    const T* p4 = base + (long long)t.o4 * channels;
    for (int c = 0; c < channels; ++c)
      acc[c] += t.w1 * seg_to_float(p1[c]) + t.w2 * seg_to_float(p2[c]) +
                t.w3 * seg_to_float(p3[c]) + t.w4 * seg_to_float(p4[c]);
  }
}

// float32 maps: cloned for AVX-512 and AVX2, picked at load time (vector lanes
// round exactly as scalar code: no fused multiply-adds here).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
// (no-loop-unroll-and-jam: left to itself GCC jams two taps into one scalar channel loop.)
__attribute__((target_clones("avx512f", "avx2", "default"), optimize("no-loop-unroll-and-jam")))
#endif
void accumulate_taps_nhwc_f32(float* acc, const float* base, const BilinearTap* taps, int samples, int channels) {
  sum_taps_nhwc(acc, base, taps, samples, channels);
}

template <typename T>
void accumulate_taps_nhwc(float* acc, const T* base, const BilinearTap* taps, int samples, int channels) {
  if constexpr (std::is_same<T, float>::value)
    accumulate_taps_nhwc_f32(acc, base, taps, samples, channels);
  else
    sum_taps_nhwc(acc, base, taps, samples, channels);
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void divide_all(float* __restrict__ values, long long n, float divisor) {
  for (long long i = 0; i < n; ++i) values[i] = values[i] / divisor;
}

// RoIAlign of every box from its level. channels_last: the maps are laid out
// [B, H, W, C] instead of [B, C, H, W]; a tap then reads C contiguous values,
// so the channel loop vectorises (accumulate_taps_nhwc), while each channel is
// summed in the same order with the same roundings as roi_bin_from_taps (four
// products left to right, taps in order, then / count): the same bits.
template <typename T>
void multilevel_roi_align(const T* f0, const T* f1, const T* f2, const T* f3,
                          const T* f4, const float* boxes, const int* counts,
                          int images, int rois_per_image, int channels,
                          int num_levels, const int* heights, const int* widths,
                          const float* scales, int k_min, int k_max,
                          float canonical_scale, float canonical_level,
                          int pooled, int sampling_ratio, int aligned, T* out,
                          int threads, bool channels_last) {
  const T* maps[SEG_ROI_MAX_LEVELS] = {f0, f1, f2, f3, f4};
  const int bins = pooled * pooled;
  const long long per_roi = (long long)channels * bins;
  parallel_ranges((long long)images * rois_per_image, threads, [&](long long begin, long long end) {
    std::vector<BilinearTap> taps;
    std::vector<float> acc(channels_last ? (size_t)bins * channels : 0);
    for (long long roi = begin; roi < end; ++roi) {
      const int image = (int)(roi / rois_per_image);
      const int row = (int)(roi - (long long)image * rois_per_image);
      const float* box = boxes + roi * 4;
      T* dst = out + roi * per_roi;
      const int valid_rows = counts ? counts[image] : rois_per_image;
      const int level = roi_assigned_level(box, row, valid_rows, num_levels, k_min,
                                           k_max, canonical_scale, canonical_level);
      if (level < 0) {
        std::fill(dst, dst + per_roi, seg_from_float<T>(0.0f));
        continue;
      }
      const int height = heights[level], width = widths[level];
      const RoiWindow w = roi_window(box, scales[level], aligned, pooled, sampling_ratio);
      // Taps are shared by all channels (torchvision's CPU pre_calc).
      window_taps(w, pooled, height, width, taps);
      const long long plane = (long long)height * width;
      const T* base = maps[level] + (long long)image * channels * plane;
      if (!channels_last) {
        for (int c = 0; c < channels; ++c) {
          const T* src = base + c * plane;
          for (int bin = 0; bin < bins; ++bin)
            dst[(long long)c * bins + bin] = seg_from_float<T>(
                roi_bin_from_taps(src, taps.data() + (long long)bin * w.samples, w.samples, w.count));
        }
        continue;
      }
      // Bin-major sums (acc[bin][c]), divided in place, then written channel-major.
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int bin = 0; bin < bins; ++bin)
        accumulate_taps_nhwc(acc.data() + (size_t)bin * channels, base,
                             taps.data() + (size_t)bin * w.samples, w.samples, channels);
      divide_all(acc.data(), (long long)bins * channels, w.count);
      for (int c = 0; c < channels; ++c)
        for (int bin = 0; bin < bins; ++bin)
          dst[(long long)c * bins + bin] = seg_from_float<T>(acc[(size_t)bin * channels + c]);
    }
  });
}

// One image: candidates sorted by the shared order, then the same block walk
// as the CUDA select kernel. Mask words are computed when needed (diagonal
// words for every block reached, later words only for kept rows) instead of
// all up front: the arithmetic per word is the same.
void nms_image(const SegBox* boxes, const float* scores, const int* classes,
               int n, int valid_rows, float score_threshold, float iou_threshold,
               int max_outputs, int* out_count, long long* out_indices,
               float* out_boxes, float* out_scores, long long* out_classes) {
  std::vector<int> order;
  for (int i = 0; i < n; ++i)
    if (nms_is_candidate(scores[i], score_threshold, i, valid_rows)) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return nms_precedes(scores[a], a, scores[b], b);
  });
  const int m = (int)order.size();
  std::vector<SegBox> sorted(m);
  std::vector<float> areas(m);
  std::vector<int> sorted_classes(m);
  for (int r = 0; r < m; ++r) {
    sorted[r] = boxes[order[r]];
    areas[r] = nms_box_area(sorted[r]);
    sorted_classes[r] = classes[order[r]];
  }
  const int words = (m + SEG_NMS_BLOCK - 1) / SEG_NMS_BLOCK;
  std::vector<unsigned long long> removed(words, 0ULL);
  unsigned long long diagonal[SEG_NMS_BLOCK];
  std::vector<int> kept_ranks;
  int kept = 0;
  auto word_of = [&](int rank, int block, int first) {
    const int col0 = block * SEG_NMS_BLOCK;
    const int ncols = std::min(SEG_NMS_BLOCK, m - col0);
    return nms_row_word(sorted[rank], areas[rank], sorted_classes[rank], sorted.data() + col0,
                        areas.data() + col0, sorted_classes.data() + col0, first, ncols,
                        iou_threshold);
  };
  for (int nb = 0; nb < words && kept < max_outputs; ++nb) {
    const int first_rank = nb * SEG_NMS_BLOCK;
    const int nrows = std::min(SEG_NMS_BLOCK, m - first_rank);
    for (int t = 0; t < nrows; ++t) diagonal[t] = word_of(first_rank + t, nb, t + 1);
    const unsigned long long keep = nms_resolve_block(removed[nb], diagonal, nrows, max_outputs, &kept);
    for (int t = 0; t < nrows; ++t) {
      if (!((keep >> t) & 1ULL)) continue;
      kept_ranks.push_back(first_rank + t);
      for (int w = nb + 1; w < words; ++w) removed[w] |= word_of(first_rank + t, w, 0);
    }
  }
  *out_count = kept;
  for (int k = 0; k < max_outputs; ++k) {
    if (k < kept) {
      const int src = order[kept_ranks[k]];
      out_indices[k] = src;
      reinterpret_cast<SegBox*>(out_boxes)[k] = boxes[src];
      out_scores[k] = scores[src];
      out_classes[k] = classes[src];
    } else {
      out_indices[k] = -1;
      reinterpret_cast<SegBox*>(out_boxes)[k] = SegBox{0.0f, 0.0f, 0.0f, 0.0f};
      out_scores[k] = 0.0f;
      out_classes[k] = 0;
    }
  }
}

}  // namespace

// Parameters mirror the CUDA kernels' (same names, same order); the CPU
// functions take the per-level sizes as arrays and a thread count.
extern "C" {

int segstream_kernels_abi_version() { return 1; }

#define SEG_HOST_ROI_ALIGN(NAME, T, NHWC)                                                  \
  void NAME(const T* f0, const T* f1, const T* f2, const T* f3, const T* f4,            \
            const float* boxes, const int* counts, int images, int rois_per_image,      \
            int channels, int num_levels, const int* heights, const int* widths,        \
            const float* scales, int k_min, int k_max, float canonical_scale,           \
            float canonical_level, int pooled, int sampling_ratio, int aligned, T* out, \
            int threads) {                                                              \
    multilevel_roi_align<T>(f0, f1, f2, f3, f4, boxes, counts, images, rois_per_image,  \
                            channels, num_levels, heights, widths, scales, k_min, k_max, \
                            canonical_scale, canonical_level, pooled, sampling_ratio,   \
                            aligned, out, threads, NHWC);                               \
  }

SEG_HOST_ROI_ALIGN(segstream_multilevel_roi_align_f32, float, false)
SEG_HOST_ROI_ALIGN(segstream_multilevel_roi_align_f16, seg_half, false)
SEG_HOST_ROI_ALIGN(segstream_multilevel_roi_align_nhwc_f32, float, true)
SEG_HOST_ROI_ALIGN(segstream_multilevel_roi_align_nhwc_f16, seg_half, true)

void segstream_batched_nms(const float* boxes, const float* scores, const int* classes,
                           const int* counts, int images, int n, float score_threshold,
                           float iou_threshold, int max_outputs, int* out_count,
                           long long* out_indices, float* out_boxes, float* out_scores,
                           long long* out_classes, int threads) {
  parallel_ranges(images, threads, [&](long long begin, long long end) {
    for (long long b = begin; b < end; ++b) {
      const long long off = b * n, out_off = b * max_outputs;
      nms_image(reinterpret_cast<const SegBox*>(boxes) + off, scores + off, classes + off, n,
                counts ? counts[b] : n, score_threshold, iou_threshold, max_outputs,
                out_count + b, out_indices + out_off, out_boxes + out_off * 4,
                out_scores + out_off, out_classes + out_off);
    }
  });
}

// Level index per box (-1: none), for checking the level rule on its own.
void segstream_roi_levels(const float* boxes, int n, int num_levels, int k_min, int k_max,
                          float canonical_scale, float canonical_level, int* out) {
  for (int i = 0; i < n; ++i)
    out[i] = roi_assigned_level(boxes + 4LL * i, 0, 1, num_levels, k_min, k_max,
                                canonical_scale, canonical_level);
}

void segstream_half_from_float(const float* src, unsigned short* dst, long long n) {
  for (long long i = 0; i < n; ++i) dst[i] = seg_from_float<seg_half>(src[i]).bits;
}

void segstream_half_to_float(const unsigned short* src, float* dst, long long n) {
  for (long long i = 0; i < n; ++i) dst[i] = seg_to_float(seg_half{src[i]});
}

// COCO RLE of a box-region mask (see rle.h): string length, or -(counts needed).
long long segstream_rle_encode_region(const unsigned char* region, long long h, long long w,
                                      long long row_stride, long long x0, long long y0,
                                      long long height, long long width, long long* counts,
                                      long long cap, char* out, long long out_cap) {
  return seg_rle_encode_region(region, h, w, row_stride, x0, y0, height, width, counts, cap, out, out_cap);
}

// Mask paste + threshold + full-frame COCO RLE counts (mask_rle.cuh), the CUDA kernel's
// segstream_mask_rle with a loop over instances: same inputs, same fixed-size outputs.
void segstream_mask_rle(const float* masks, const float* boxes, const int* sizes, int n, int m,
                        float grow, float threshold, int cap, int* counts, int* num, int* regions,
                        int threads) {
  parallel_ranges(n, threads, [&](long long begin, long long end) {
    for (long long i = begin; i < end; ++i) {
      const SegPaste g = seg_paste_geometry(boxes + 4 * i, m, grow, sizes[2 * i], sizes[2 * i + 1]);
      const float* mask = masks + i * m * m;
      int* row = counts + i * cap;
      long long changes = 0;
      for (int x = g.x0; x < g.x1; ++x) changes += seg_paste_column(g, mask, m, threshold, x, row, changes, cap);
      const long long total = changes + 1;
      if (total <= cap) {
        long long previous = 0;
        for (long long k = 0; k < total; ++k) {
          const long long position = k < changes ? row[k] : (long long)g.height * g.width;
          row[k] = (int)(position - previous);
          previous = position;
        }
      }
      num[i] = (int)total;
      int* region = regions + 4 * i;
      region[0] = g.x0;
      region[1] = g.y0;
      region[2] = g.x1;
      region[3] = g.y1;
    }
  });
}

// Box region of a pasted mask from its int32 COCO counts (rle.h): 0, or -1 if ones lie outside it.
int segstream_rle_decode_region(const int* counts, long long n, long long x0, long long y0, long long x1,
                                long long y1, long long height, unsigned char* out) {
  return seg_rle_decode_region(counts, n, x0, y0, x1, y1, height, out);
}

// COCO's compressed string of int32 counts (pycocotools' rleToString); returns its length.
long long segstream_rle_compress(const int* counts, long long n, char* out, long long cap) {
  return seg_rle_compress(counts, n, out, cap);
}

// The row pass of a box-local bilinear paste (pipeline/bilinear.py: paste_mask), thresholded:
// out[r * out_stride + x] = (cols[r0[r]][x] * w0[r] + cols[r1[r]][x] * w1[r]) > threshold, for
// r < rows, x < width. cols: float32 [m, width], the mask already resized along its columns (numpy).
// Two products and a sum in float32 per pixel, in torch's order and without a fused multiply-add
// (-ffp-contract=off): the result is numpy's and torch's bit for bit.
void segstream_paste_rows(const float* cols, long long width, const long long* r0, const long long* r1,
                          const float* w0, const float* w1, long long rows, float threshold,
                          unsigned char* out, long long out_stride) {
  for (long long r = 0; r < rows; ++r) {
    const float* a = cols + r0[r] * width;
    const float* b = cols + r1[r] * width;
    const float wa = w0[r], wb = w1[r];
    unsigned char* o = out + r * out_stride;
    for (long long x = 0; x < width; ++x) {
      float v = a[x] * wa;
      v = v + b[x] * wb;
      o[x] = v > threshold;
    }
  }
}

}  // extern "C"
