// Batched (class-aware) NMS: the per-pair and per-block arithmetic, shared by
// the CUDA kernels (kernels.cu) and the CPU build (host.cpp).
//
// Candidates are ordered by score (descending), ties by input row
// (ascending): torchvision's stable sort. Within that order, row i suppresses a
// later row j of the same class when IoU(i, j) > threshold and i is itself
// kept. The order is cut into blocks of 64 ranks; a "mask word" holds, for one
// row, the suppression bits against the 64 ranks of one block.
#pragma once
#include "portable.cuh"

#define SEG_NMS_BLOCK 64

struct SegBox {
  float x1, y1, x2, y2;
};

// Whether a row takes part: inside the image's valid rows, and score strictly
// above the threshold (torchvision's RoIHeads uses `scores > score_thresh`).
// A NaN score is never a candidate.
SEG_HD bool nms_is_candidate(float score, float score_threshold, int row,
                             int valid_rows) {
  return row < valid_rows && score > score_threshold;
}

// Strict total order of candidates: a before b.
SEG_HD bool nms_precedes(float score_a, int row_a, float score_b, int row_b) {
  return score_a > score_b || (score_a == score_b && row_a < row_b);
}

SEG_HD float nms_box_area(const SegBox& b) {
  return seg_mul(b.x2 - b.x1, b.y2 - b.y1);
}

// torchvision's CPU IoU test, operation for operation: `kept` is the earlier
// (higher-ranked) box. `threshold` is the float that makes `iou > threshold`
// agree with the reference's own comparison (see nms.py).
SEG_HD bool nms_suppresses(const SegBox& kept, float kept_area, int kept_class,
                           const SegBox& other, float other_area,
                           int other_class, float threshold) {
  if (kept_class != other_class) return false;
  const float xx1 = seg_std_max(kept.x1, other.x1);
  const float yy1 = seg_std_max(kept.y1, other.y1);
  const float xx2 = seg_std_min(kept.x2, other.x2);
  const float yy2 = seg_std_min(kept.y2, other.y2);
  const float w = seg_std_max(0.0f, xx2 - xx1);
  const float h = seg_std_max(0.0f, yy2 - yy1);
  const float inter = seg_mul(w, h);
  const float iou = inter / ((kept_area + other_area) - inter);
  return iou > threshold;
}

// Suppression bits of one row against columns [first, n) of a block whose
// sorted boxes, areas and classes are given.
SEG_HD unsigned long long nms_row_word(const SegBox& row, float row_area,
                                       int row_class, const SegBox* cols,
                                       const float* col_areas,
                                       const int* col_classes, int first, int n,
                                       float threshold) {
  unsigned long long word = 0ULL;
  for (int j = first; j < n; ++j) {
    if (nms_suppresses(row, row_area, row_class, cols[j], col_areas[j],
                       col_classes[j], threshold))
      word |= 1ULL << j;
  }
  return word;
}

// Resolves one block of `rows` ranks in order. `removed` holds the bits of
// this block already suppressed by kept rows of earlier blocks; `diagonal[t]`
// is row t's word against its own block (bits above t only). Keeps rows until
// `*kept` reaches `budget`; returns the kept rows' bits and advances `*kept`.
SEG_HD unsigned long long nms_resolve_block(unsigned long long removed,
                                            const unsigned long long* diagonal,
                                            int rows, int budget, int* kept) {
  unsigned long long keep = 0ULL;
  for (int t = 0; t < rows && *kept < budget; ++t) {
    if (!((removed >> t) & 1ULL)) {
      keep |= 1ULL << t;
      removed |= diagonal[t];
      *kept += 1;
    }
  }
  return keep;
}
