// Definitions that let the same arithmetic compile three ways: nvcc, NVRTC
// (device only, no system headers) and the host C++ compiler (the CPU build).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define SEG_HD __host__ __device__ __forceinline__
#else
#define SEG_HD inline
#endif
#if !defined(__CUDACC_RTC__)  // NVRTC has the device math built in, and no libc
#include <math.h>
#include <string.h>
#endif

// The device compilers may fuse a*b+c into one FMA, which rounds once instead
// of twice. Where torchvision's CPU kernel (the reference) rounds the product,
// the product goes through seg_mul so both builds round identically.
SEG_HD float seg_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// std::max / std::min semantics (they return the first argument when the
// comparison is false, which decides what a NaN turns into); torchvision's CPU
// kernels use them, fmaxf/fminf would differ on NaN.
SEG_HD float seg_std_max(float a, float b) { return (a < b) ? b : a; }
SEG_HD float seg_std_min(float a, float b) { return (b < a) ? b : a; }

// IEEE binary16 storage. A plain struct instead of __half so that NVRTC needs
// no cuda_fp16.h and the host build needs no compiler extension.
struct seg_half {
  unsigned short bits;
};

SEG_HD float seg_to_float(float v) { return v; }

SEG_HD float seg_to_float(seg_half h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
  return f;
#else
  const unsigned sign = (unsigned)(h.bits & 0x8000u) << 16;
  const unsigned exponent = (h.bits >> 10) & 0x1fu;
  const unsigned mantissa = h.bits & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in float.
    const float magnitude = (float)mantissa * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
  }
  unsigned bits;
  if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

template <typename T>
SEG_HD T seg_from_float(float v);

template <>
SEG_HD float seg_from_float<float>(float v) { return v; }

template <>
SEG_HD seg_half seg_from_float<seg_half>(float v) {
  seg_half h;
#if defined(__CUDA_ARCH__)
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
#else
  // Round to nearest even, as torch's Tensor.half() does.
  unsigned bits;
  memcpy(&bits, &v, sizeof bits);
  const unsigned short sign = (unsigned short)((bits >> 16) & 0x8000u);
  const unsigned magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // inf or NaN (NaN stays a quiet NaN)
    h.bits = sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0u);
  } else if (magnitude >= 0x477ff000u) {  // >= 65520 rounds to inf
    h.bits = sign | 0x7c00u;
  } else if (magnitude < 0x38800000u) {  // below 2^-14: subnormal half or zero
    float a;
    memcpy(&a, &magnitude, sizeof a);
    // a * 2^24 is exact; nearbyintf rounds half to even in the default mode.
    h.bits = sign | (unsigned short)nearbyintf(a * 16777216.0f);
  } else {
    const unsigned mantissa = magnitude & 0x7fffffu;
    unsigned half = (((magnitude >> 23) - 112u) << 10) | (mantissa >> 13);
    const unsigned rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half += 1u;  // carry may reach the exponent: correct
    h.bits = sign | (unsigned short)half;
  }
#endif
  return h;
}
