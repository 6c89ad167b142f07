"""The CPU build of the kernels: compiled with the system C++ compiler on first use, loaded with ctypes.

The library is ``host.cpp`` plus the shared headers, built once per source digest into the
cache (see :mod:`segstream.kernels.sources`). ``-ffp-contract=off`` keeps the compiler from
fusing multiply-adds, so float results round like torchvision's CPU kernels.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from segstream.kernels import sources

CXX_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-pthread")
LIBRARY_NAME = "libsegstream_kernels.so"
ABI_VERSION = 1

_lock = threading.Lock()
_library: ctypes.CDLL | None = None

_p = ctypes.c_void_p
_i = ctypes.c_int
_f = ctypes.c_float
_ll = ctypes.c_longlong

_ROI_ALIGN_ARGS = [_p] * 7 + [_i] * 4 + [_p] * 3 + [_i, _i, _f, _f, _i, _i, _i, _p, _i]
_SIGNATURES: dict[str, list] = {
    "segstream_kernels_abi_version": [],
    "segstream_multilevel_roi_align_f32": _ROI_ALIGN_ARGS,
    "segstream_multilevel_roi_align_f16": _ROI_ALIGN_ARGS,
    "segstream_multilevel_roi_align_nhwc_f32": _ROI_ALIGN_ARGS,
    "segstream_multilevel_roi_align_nhwc_f16": _ROI_ALIGN_ARGS,
    "segstream_batched_nms": [_p, _p, _p, _p, _i, _i, _f, _f, _i, _p, _p, _p, _p, _p, _i],
    "segstream_roi_levels": [_p, _i, _i, _i, _i, _f, _f, _p],
    "segstream_half_from_float": [_p, _p, _ll],
    "segstream_half_to_float": [_p, _p, _ll],
    "segstream_rle_encode_region": [_p, _ll, _ll, _ll, _ll, _ll, _ll, _ll, _p, _ll, _p, _ll],
    "segstream_mask_rle": [_p, _p, _p, _i, _i, _f, _f, _i, _p, _p, _p, _i],
    "segstream_rle_compress": [_p, _ll, _p, _ll],
    "segstream_rle_decode_region": [_p, _ll, _ll, _ll, _ll, _ll, _ll, _p],
}
_RESTYPES = {"segstream_kernels_abi_version": ctypes.c_int, "segstream_rle_encode_region": ctypes.c_longlong,
             "segstream_rle_compress": ctypes.c_longlong, "segstream_rle_decode_region": ctypes.c_int}


class BuildError(RuntimeError):
    """The C++ compiler failed on the kernel sources; the message holds its output."""


def compiler() -> str:
    """The C++ compiler used: ``$CXX``, else ``c++``/``g++`` on PATH."""
    for candidate in (os.environ.get("CXX"), "c++", "g++"):
        if candidate and shutil.which(candidate):
            return candidate
    raise BuildError("no C++ compiler found (set CXX or install g++); the CPU kernels need one")


def _compiler_identity(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def library_path() -> Path:
    """Path of the built library, compiling it first if this source digest has none yet."""
    cxx = compiler()
    digest = sources.source_digest(f"host|{_compiler_identity(cxx)}|{' '.join(CXX_FLAGS)}")
    target = sources.cache_dir(digest) / LIBRARY_NAME
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{LIBRARY_NAME}.", suffix=".tmp")
    os.close(fd)
    try:
        cmd = [cxx, *CXX_FLAGS, f"-I{sources.CSRC}", str(sources.CSRC / sources.HOST_SOURCE), "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(f"{' '.join(cmd)}\n{result.stderr}")
        os.replace(tmp, target)  # atomic: a concurrent builder's identical file may win, harmlessly
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def library() -> ctypes.CDLL:
    """The loaded CPU library with argument types set (built on first call)."""
    global _library
    with _lock:
        if _library is None:
            lib = ctypes.CDLL(str(library_path()))
            for name, argtypes in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes = argtypes
                fn.restype = _RESTYPES.get(name)
            if lib.segstream_kernels_abi_version() != ABI_VERSION:
                raise BuildError("CPU kernel library ABI does not match this Python package")
            _library = lib
        return _library
