// CUDA kernels. Every piece of arithmetic comes from roi_align.cuh / nms.cuh;
// this file only maps it onto threads, blocks and shared memory. Compiled at
// run time with NVRTC (device_build.py) and checked with nvcc for sm_75..sm_90
// by the tests. Kernel names are extern "C" so that PTX consumers (the
// TensorRT plugin) find them unmangled. Parameters are ordered inputs, scalars,
// outputs, as TensorRT's AOT plugin launches expect.
#include "roi_align.cuh"
#include "nms.cuh"
#include "mask_rle.cuh"

namespace segstream {

template <typename T>
struct LevelMap {
  const T* data;
  int height, width;
  float scale;
};

// A switch instead of indexing a local array keeps the five maps in
// registers/constant bank rather than in a stack frame.
template <typename T>
__device__ __forceinline__ LevelMap<T> pick_level(
    int level, const T* f0, const T* f1, const T* f2, const T* f3, const T* f4,
    int h0, int w0, int h1, int w1, int h2, int w2, int h3, int w3, int h4,
    int w4, float s0, float s1, float s2, float s3, float s4) {
  LevelMap<T> m;
  switch (level) {
    case 0: m.data = f0; m.height = h0; m.width = w0; m.scale = s0; break;
    case 1: m.data = f1; m.height = h1; m.width = w1; m.scale = s1; break;
    case 2: m.data = f2; m.height = h2; m.width = w2; m.scale = s2; break;
    case 3: m.data = f3; m.height = h3; m.width = w3; m.scale = s3; break;
    default: m.data = f4; m.height = h4; m.width = w4; m.scale = s4; break;
  }
  return m;
}

// One block per (box, chunk of channels). The box's sampling taps are the
// same for every channel, so the block computes them once into shared memory
// (sample-major, so neighbouring threads read neighbouring taps) and then
// every thread produces output bins; consecutive threads write consecutive
// bins of a channel, so stores are coalesced.
template <typename T>
__device__ __forceinline__ void multilevel_roi_align_block(
    const T* __restrict__ f0, const T* __restrict__ f1, const T* __restrict__ f2,
    const T* __restrict__ f3, const T* __restrict__ f4,
    const float* __restrict__ boxes, const int* __restrict__ counts,
    int rois_per_image, int channels, int num_levels,
    int h0, int w0, int h1, int w1, int h2, int w2, int h3, int w3, int h4, int w4,
    float s0, float s1, float s2, float s3, float s4,
    int k_min, int k_max, float canonical_scale, float canonical_level,
    int pooled, int sampling_ratio, int aligned, int channels_per_block,
    int table_taps, T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char seg_shared[];
  BilinearTap* taps = reinterpret_cast<BilinearTap*>(seg_shared);

  const long long roi = blockIdx.x;
  const int image = (int)(roi / rois_per_image);
  const int row = (int)(roi - (long long)image * rois_per_image);
  const int c0 = blockIdx.y * channels_per_block;
  const int nc = min(channels_per_block, channels - c0);
  const int bins = pooled * pooled;
  const int n_out = nc * bins;
  T* dst = out + (roi * channels + c0) * bins;
  const float* box = boxes + roi * 4;

  const int valid_rows = counts ? counts[image] : rois_per_image;
  const int level = roi_assigned_level(box, row, valid_rows, num_levels, k_min,
                                       k_max, canonical_scale, canonical_level);
  if (level < 0) {  // the same for the whole block
    const T zero = seg_from_float<T>(0.0f);
    for (int e = threadIdx.x; e < n_out; e += blockDim.x) dst[e] = zero;
    return;
  }
  const LevelMap<T> m = pick_level(level, f0, f1, f2, f3, f4, h0, w0, h1, w1, h2,
                                   w2, h3, w3, h4, w4, s0, s1, s2, s3, s4);
  const RoiWindow w = roi_window(box, m.scale, aligned, pooled, sampling_ratio);
  const long long plane = (long long)m.height * m.width;
  const T* base = m.data + ((long long)image * channels + c0) * plane;
  const int n_taps = bins * w.samples;

  if (n_taps <= table_taps) {  // block-uniform: every thread has the same w
    for (int s = threadIdx.x; s < n_taps; s += blockDim.x) {
      const int k = s / bins;
      const int bin = s - k * bins;
      taps[s] = roi_window_tap(w, bin * w.samples + k, pooled, m.height, m.width);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n_out; e += blockDim.x) {
      const int c = e / bins;
      const int bin = e - c * bins;
      const T* src = base + c * plane;
      float acc = 0.0f;
      for (int k = 0; k < w.samples; ++k) acc += bilinear_read(src, taps[k * bins + bin]);
      dst[e] = seg_from_float<T>(acc / w.count);
    }
  } else {
    for (int e = threadIdx.x; e < n_out; e += blockDim.x) {
      const int c = e / bins;
      const int bin = e - c * bins;
      dst[e] = seg_from_float<T>(
          roi_bin_direct(base + c * plane, w, bin, pooled, m.height, m.width));
    }
  }
}

}  // namespace segstream

#define SEG_ROI_ALIGN_KERNEL(NAME, T)                                              \
  extern "C" __global__ void __launch_bounds__(256) NAME(                          \
      const T* f0, const T* f1, const T* f2, const T* f3, const T* f4,             \
      const float* boxes, const int* counts, int rois_per_image, int channels,     \
      int num_levels, int h0, int w0, int h1, int w1, int h2, int w2, int h3,      \
      int w3, int h4, int w4, float s0, float s1, float s2, float s3, float s4,    \
      int k_min, int k_max, float canonical_scale, float canonical_level,          \
      int pooled, int sampling_ratio, int aligned, int channels_per_block,         \
      int table_taps, T* out) {                                                    \
    segstream::multilevel_roi_align_block<T>(                                      \
        f0, f1, f2, f3, f4, boxes, counts, rois_per_image, channels, num_levels,   \
        h0, w0, h1, w1, h2, w2, h3, w3, h4, w4, s0, s1, s2, s3, s4, k_min, k_max,  \
        canonical_scale, canonical_level, pooled, sampling_ratio, aligned,         \
        channels_per_block, table_taps, out);                                      \
  }

SEG_ROI_ALIGN_KERNEL(segstream_multilevel_roi_align_f32, float)
SEG_ROI_ALIGN_KERNEL(segstream_multilevel_roi_align_f16, seg_half)

// --- batched NMS: rank -> mask -> select, all sizes fixed by N and K --------

#define SEG_NMS_RANK_THREADS 256

// Sort without a sort: each candidate's rank is the number of candidates that
// precede it (O(N^2) comparisons through shared-memory tiles; N is a few
// thousand after the pre-NMS top-k). Candidates are scattered to their rank;
// non-candidates carry a NaN score, which precedes nothing and is preceded by
// nothing.
extern "C" __global__ void __launch_bounds__(SEG_NMS_RANK_THREADS) segstream_nms_rank(
    const float* __restrict__ boxes, const float* __restrict__ scores,
    const int* __restrict__ classes, const int* __restrict__ counts, int n,
    float score_threshold, int* __restrict__ order,
    float* __restrict__ sorted_boxes, int* __restrict__ sorted_classes,
    int* __restrict__ num_valid) {
  __shared__ float tile[SEG_NMS_RANK_THREADS];
  const int image = blockIdx.y;
  const int i = blockIdx.x * SEG_NMS_RANK_THREADS + threadIdx.x;
  const long long off = (long long)image * n;
  const int valid_rows = counts ? counts[image] : n;
  const float nan = __int_as_float(0x7fc00000);

  float mine = nan;
  if (i < n) {
    const float v = scores[off + i];
    if (nms_is_candidate(v, score_threshold, i, valid_rows)) mine = v;
  }
  int before = 0, total = 0;
  for (int start = 0; start < n; start += SEG_NMS_RANK_THREADS) {
    const int j = start + threadIdx.x;
    float v = nan;
    if (j < n) {
      const float s = scores[off + j];
      if (nms_is_candidate(s, score_threshold, j, valid_rows)) v = s;
    }
    tile[threadIdx.x] = v;
    __syncthreads();
    const int m = min(SEG_NMS_RANK_THREADS, n - start);
    for (int t = 0; t < m; ++t) {
      const float other = tile[t];
      total += (other == other);
      before += nms_precedes(other, start + t, mine, i);
    }
    __syncthreads();
  }
  if (mine == mine) {
    const long long dst = off + before;
    order[dst] = i;
    reinterpret_cast<SegBox*>(sorted_boxes)[dst] = reinterpret_cast<const SegBox*>(boxes)[off + i];
    sorted_classes[dst] = classes[off + i];
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) num_valid[image] = total;
}

// Suppression words of one 64-rank row block against one 64-rank column
// block (upper triangle only), as in torchvision's CUDA nms, plus the class
// test. Blocks beyond the image's candidate count exit at once.
extern "C" __global__ void __launch_bounds__(SEG_NMS_BLOCK) segstream_nms_mask(
    const float* __restrict__ sorted_boxes, const int* __restrict__ sorted_classes,
    const int* __restrict__ num_valid, int n, float iou_threshold,
    unsigned long long* __restrict__ mask) {
  const int image = blockIdx.z;
  const int row_block = blockIdx.y;
  const int col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int m = num_valid[image];
  const int col0 = col_block * SEG_NMS_BLOCK;
  if (col0 >= m) return;

  __shared__ SegBox cols[SEG_NMS_BLOCK];
  __shared__ float areas[SEG_NMS_BLOCK];
  __shared__ int col_classes[SEG_NMS_BLOCK];
  const long long off = (long long)image * n;
  const SegBox* sorted = reinterpret_cast<const SegBox*>(sorted_boxes) + off;
  const int ncols = min(SEG_NMS_BLOCK, m - col0);
  if (threadIdx.x < ncols) {
    const SegBox b = sorted[col0 + threadIdx.x];
    cols[threadIdx.x] = b;
    areas[threadIdx.x] = nms_box_area(b);
    col_classes[threadIdx.x] = sorted_classes[off + col0 + threadIdx.x];
  }
  __syncthreads();
  const int row = row_block * SEG_NMS_BLOCK + threadIdx.x;
  if (row < m) {
    const SegBox b = sorted[row];
    const int first = row_block == col_block ? threadIdx.x + 1 : 0;
    const unsigned long long word =
        nms_row_word(b, nms_box_area(b), sorted_classes[off + row], cols, areas,
                     col_classes, first, ncols, iou_threshold);
    mask[(off + row) * gridDim.x + col_block] = word;
  }
}

#define SEG_NMS_SELECT_THREADS 256

// One block per image walks the blocks of 64 ranks in order: resolves the
// block (one thread, 64 cheap steps on shared memory), then ORs the kept
// rows' words into the suppression state of the later blocks (all threads).
// Stops once max_outputs boxes are kept; writes the fixed-size outputs.
// Dynamic shared memory: ceil(n / 64) words.
extern "C" __global__ void __launch_bounds__(SEG_NMS_SELECT_THREADS) segstream_nms_select(
    const float* __restrict__ boxes, const float* __restrict__ scores,
    const int* __restrict__ classes, const int* __restrict__ order,
    const int* __restrict__ num_valid, const unsigned long long* __restrict__ mask,
    int n, int max_outputs, int* __restrict__ out_count,
    long long* __restrict__ out_indices, float* __restrict__ out_boxes,
    float* __restrict__ out_scores, long long* __restrict__ out_classes) {
  extern __shared__ unsigned long long removed[];
  __shared__ unsigned long long diagonal[SEG_NMS_BLOCK];
  __shared__ unsigned long long block_keep;
  __shared__ int kept_total;

  const int image = blockIdx.x;
  const long long off = (long long)image * n;
  const int words = (n + SEG_NMS_BLOCK - 1) / SEG_NMS_BLOCK;
  const int m = num_valid[image];
  const int live_words = (m + SEG_NMS_BLOCK - 1) / SEG_NMS_BLOCK;
  const unsigned long long* rows = mask + off * words;
  // Kept ranks are parked in this image's index row and turned into input
  // rows at the end.
  long long* slots = out_indices + (long long)image * max_outputs;

  for (int w = threadIdx.x; w < live_words; w += blockDim.x) removed[w] = 0ULL;
  if (threadIdx.x == 0) kept_total = 0;
  __syncthreads();

  for (int nb = 0; nb < live_words; ++nb) {
    const int kept = kept_total;
    if (kept >= max_outputs) break;  // uniform: read after a barrier
    const int first_rank = nb * SEG_NMS_BLOCK;
    const int nrows = min(SEG_NMS_BLOCK, m - first_rank);
    if (threadIdx.x < SEG_NMS_BLOCK)
      diagonal[threadIdx.x] = threadIdx.x < nrows
          ? rows[(long long)(first_rank + threadIdx.x) * words + nb] : 0ULL;
    __syncthreads();
    if (threadIdx.x == 0) {
      int total = kept;
      const unsigned long long keep =
          nms_resolve_block(removed[nb], diagonal, nrows, max_outputs, &total);
      unsigned long long bits = keep;
      int slot = kept;
      while (bits) {
        slots[slot++] = first_rank + __ffsll((long long)bits) - 1;
        bits &= bits - 1ULL;
      }
      block_keep = keep;
      kept_total = total;
    }
    __syncthreads();
    const unsigned long long keep = block_keep;
    for (int w = nb + 1 + threadIdx.x; w < live_words; w += blockDim.x) {
      unsigned long long acc = removed[w];
      unsigned long long bits = keep;
      while (bits) {
        const int t = __ffsll((long long)bits) - 1;
        bits &= bits - 1ULL;
        acc |= rows[(long long)(first_rank + t) * words + w];
      }
      removed[w] = acc;
    }
    __syncthreads();
  }

  const int kept = kept_total;
  for (int k = threadIdx.x; k < max_outputs; k += blockDim.x) {
    const long long dst = (long long)image * max_outputs + k;
    if (k < kept) {
      const int src = order[off + slots[k]];
      out_indices[dst] = src;
      reinterpret_cast<SegBox*>(out_boxes)[dst] = reinterpret_cast<const SegBox*>(boxes)[off + src];
      out_scores[dst] = scores[off + src];
      out_classes[dst] = classes[off + src];
    } else {
      out_indices[dst] = -1;
      reinterpret_cast<SegBox*>(out_boxes)[dst] = SegBox{0.0f, 0.0f, 0.0f, 0.0f};
      out_scores[dst] = 0.0f;
      out_classes[dst] = 0;
    }
  }
  if (threadIdx.x == 0) out_count[image] = kept;
}

// --- mask paste + threshold + full-frame COCO RLE counts (mask_rle.cuh) ----------------------

#define SEG_RLE_THREADS 256

// One block per instance. Each thread owns a contiguous chunk of the region's columns: it counts
// the chunk's change positions, a block scan gives each chunk its offset, the chunk is scanned
// again writing positions into the instance's counts row, and the positions are turned into
// counts in place (rounds of blockDim, the previous position handed over in shared memory).
// Fixed-size outputs: counts [N, cap] (int32), num [N] = number of counts (> cap: the row is
// incomplete and the caller encodes that instance another way), regions [N, 4] = x0, y0, x1, y1.
extern "C" __global__ void __launch_bounds__(SEG_RLE_THREADS) segstream_mask_rle(
    const float* __restrict__ masks, const float* __restrict__ boxes, const int* __restrict__ sizes,
    int m, float grow, float threshold, int cap, int* __restrict__ counts, int* __restrict__ num,
    int* __restrict__ regions) {
  __shared__ int chunk_start[SEG_RLE_THREADS + 1];
  __shared__ int vals[SEG_RLE_THREADS];
  __shared__ int carry;

  const int instance = blockIdx.x;
  const int tid = threadIdx.x;
  const int threads = blockDim.x;
  const float* mask = masks + (long long)instance * m * m;
  const SegPaste g = seg_paste_geometry(boxes + 4LL * instance, m, grow, sizes[2 * instance], sizes[2 * instance + 1]);
  int* row = counts + (long long)instance * cap;

  const int columns = g.x1 - g.x0;
  const int per_thread = (columns + threads - 1) / threads;
  const int first = g.x0 + tid * per_thread;
  const int last = min(first + per_thread, g.x1);
  int mine = 0;
  for (int x = first; x < last; ++x) mine += seg_paste_column(g, mask, m, threshold, x, nullptr, 0, 0);
  chunk_start[tid + 1] = mine;
  if (tid == 0) {
    chunk_start[0] = 0;
    carry = 0;
  }
  __syncthreads();
  if (tid == 0)  // 256 additions: cheaper to do serially than to synchronise a tree
    for (int t = 1; t <= threads; ++t) chunk_start[t] += chunk_start[t - 1];
  __syncthreads();
  const int changes = chunk_start[threads];
  long long offset = chunk_start[tid];
  for (int x = first; x < last; ++x) offset += seg_paste_column(g, mask, m, threshold, x, row, offset, cap);
  __syncthreads();

  const int total = changes + 1;  // counts = changes + the final run
  if (total <= cap) {
    const int frame = g.height * g.width;
    for (int base = 0; base < total; base += threads) {  // block-uniform trip count
      const int i = base + tid;
      const int position = i < changes ? row[i] : frame;
      vals[tid] = position;
      __syncthreads();
      const int previous = tid ? vals[tid - 1] : carry;
      if (i < total) row[i] = position - previous;
      __syncthreads();
      if (tid == 0) carry = vals[threads - 1];
      __syncthreads();
    }
  }
  if (tid == 0) {
    num[instance] = total;
    regions[4 * instance + 0] = g.x0;
    regions[4 * instance + 1] = g.y0;
    regions[4 * instance + 2] = g.x1;
    regions[4 * instance + 3] = g.y1;
  }
}
