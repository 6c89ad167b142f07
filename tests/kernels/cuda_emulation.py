"""Runs the CUDA kernels of ``kernels.cu`` on the CPU, for machines without a GPU.

The kernel source is compiled by g++ (C++20) with a thin shim: one std::thread per CUDA thread
of a block, ``__syncthreads`` as a std::barrier, ``__shared__`` as static storage (blocks run one
after another), and ``threadIdx``/``blockIdx`` as thread-locals. :func:`launcher` returns a
drop-in replacement for ``segstream.kernels.device_build.launch`` that takes the same ctypes
argument lists, so the ops' real CUDA path (argument packing, grid sizes, workspaces, the
kernels' indexing and synchronisation) runs on CPU tensors.

What it cannot cover: the few lines under ``__CUDA_ARCH__`` (half conversions in PTX, the
reciprocal in the level rule, the FMA-free multiply), which take their host form here, and
anything about real GPU timing or memory ordering beyond the block barrier.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from segstream.kernels import device_build, sources

SHIM = r"""
#include <algorithm>
#include <barrier>
#include <cstring>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct seg_dim3 { unsigned x = 1, y = 1, z = 1; };
thread_local seg_dim3 threadIdx, blockIdx;
seg_dim3 blockDim, gridDim;
static std::barrier<>* seg_block_barrier = nullptr;
inline void __syncthreads() { seg_block_barrier->arrive_and_wait(); }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
using std::max;
using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

namespace segstream { alignas(16) unsigned char seg_shared[1 << 16]; }
alignas(16) unsigned long long removed[1 << 13];
"""

LAUNCHER = r"""
template <typename... A, std::size_t... I>
static void seg_call(void (*k)(A...), void** p, std::index_sequence<I...>) {
  k(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}

// The argument list must match the kernel's parameters in number and size: a real launch
// would read whatever lies there.
template <typename... A>
static bool seg_signature_matches(void (*)(A...), unsigned n, const unsigned* sizes) {
  const unsigned expected[] = {(unsigned)sizeof(A)...};
  if (n != sizeof...(A)) return false;
  for (unsigned i = 0; i < n; ++i)
    if (sizes[i] != expected[i]) return false;
  return true;
}

template <typename... A>
static void seg_launch(void (*k)(A...), unsigned gx, unsigned gy, unsigned gz, unsigned bx, void** p) {
  gridDim = {gx, gy, gz};
  blockDim = {bx, 1, 1};
  std::barrier<> bar((std::ptrdiff_t)bx);
  seg_block_barrier = &bar;
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < bx; ++t)
    threads.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
          for (unsigned x = 0; x < gx; ++x) {
            blockIdx = {x, y, z};
            seg_call(k, p, std::index_sequence_for<A...>{});
            bar.arrive_and_wait();  // the next block starts when this one is done
          }
    });
  for (auto& th : threads) th.join();
}

extern "C" int seg_emulate(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                           unsigned shared_bytes, unsigned n, const unsigned* sizes, void** p) {
  if (shared_bytes > sizeof(segstream::seg_shared) || shared_bytes > sizeof(removed)) return 2;
#define SEG_KERNEL(K)                                                 \
  if (!std::strcmp(name, #K)) {                                       \
    if (!seg_signature_matches(K, n, sizes)) return 3;                \
    seg_launch(K, gx, gy, gz, bx, p);                                 \
    return 0;                                                         \
  }
  SEG_KERNEL(segstream_multilevel_roi_align_f32)
  SEG_KERNEL(segstream_multilevel_roi_align_f16)
  SEG_KERNEL(segstream_nms_rank)
  SEG_KERNEL(segstream_nms_mask)
  SEG_KERNEL(segstream_nms_select)
  SEG_KERNEL(segstream_mask_rle)
  return 1;
}
"""


def build(directory: Path) -> ctypes.CDLL:
    """Compile the emulated kernels into ``directory`` and load them."""
    kernels = (sources.CSRC / sources.DEVICE_SOURCE).read_text()
    # Dynamic shared memory becomes the shim's static buffers.
    kernels, n = re.subn(r"extern __shared__ (?:__align__\(\d+\) )?(\w[\w ]*?) (\w+)\[\];", r"extern \1 \2[];", kernels)
    assert n == 2, "kernels.cu changed its dynamic shared memory declarations; update the emulator"
    unit = directory / "emulated_kernels.cpp"
    unit.write_text(SHIM + "\n#line 1 \"kernels.cu\"\n" + kernels + "\n" + LAUNCHER)
    library = directory / "libemulated_kernels.so"
    cmd = [
        "g++", "-std=c++20", "-O1", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-pthread",
        f"-I{sources.CSRC}", str(unit), "-o", str(library),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"emulator build failed:\n{result.stderr}")
    lib = ctypes.CDLL(str(library))
    lib.seg_emulate.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.c_void_p, ctypes.c_void_p]
    lib.seg_emulate.restype = ctypes.c_int
    return lib


def launcher(lib: ctypes.CDLL, calls: list[str] | None = None) -> Callable[..., None]:
    """A ``device_build.launch`` look-alike that runs the kernel on the CPU (tensors on the CPU)."""

    def launch(
        device: torch.device,
        kernel: str,
        grid: tuple[int, int, int],
        block: int,
        shared_bytes: int,
        args: Sequence[ctypes._SimpleCData],
    ) -> None:
        assert kernel in device_build.KERNEL_NAMES
        if calls is not None:
            calls.append(kernel)
        if min(grid) <= 0:
            return
        pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        sizes = (ctypes.c_uint * len(args))(*[ctypes.sizeof(a) for a in args])
        status = lib.seg_emulate(
            kernel.encode(), *grid, block, shared_bytes, len(args), ctypes.addressof(sizes), ctypes.addressof(pointers)
        )
        assert status != 3, f"{kernel}: argument list does not match the kernel's parameters"
        assert status == 0, f"emulator refused {kernel} (status {status})"

    return launch
