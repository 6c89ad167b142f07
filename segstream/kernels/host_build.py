"""The CPU build of the kernels: a prebuilt shared library, loaded with ctypes. Nothing is compiled here.

``libsegstream_kernels.so`` is ``csrc/host.cpp`` plus the shared headers, compiled by CMake
(``CMakeLists.txt``, run by scikit-build-core) when the wheel is built, with ``-O3
-ffp-contract=off -fno-fast-math``: ``-ffp-contract=off`` keeps the compiler from fusing
multiply-adds, so float results round like torchvision's CPU kernels. The wheel carries it next to
this file; an editable install puts it in site-packages (found through the package's ``__path__``);
a checkout used through ``PYTHONPATH`` gets it with ``make kernels``.

A missing or unloadable library is :class:`KernelLibraryError`, raised by :func:`check` when an
engine or pipeline starts (the CLI prints it as one ``segstream: error:`` line, exit 2).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import segstream.kernels

# The flags CMakeLists.txt compiles with (tests/kernels/host_compile.py builds test variants with these).
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


class KernelLibraryError(RuntimeError):
    """The prebuilt CPU kernel library is missing, does not load, or belongs to another version."""


_REINSTALL = ("reinstall segstream from its wheel (pip install --force-reinstall segstream), "
              "or in a checkout run `make kernels`")


def library_path() -> Path:
    """Path of the installed library: the first ``segstream/kernels/`` directory holding it.

    Raises KernelLibraryError when no directory of the package has it; never compiles.
    """
    searched = [Path(entry) for entry in segstream.kernels.__path__]
    for folder in searched:
        candidate = folder / LIBRARY_NAME
        if candidate.is_file():
            return candidate
    where = ", ".join(str(folder) for folder in searched)
    raise KernelLibraryError(f"the CPU kernel library {LIBRARY_NAME} is not installed (looked in {where}): {_REINSTALL}")


def _load(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = _RESTYPES.get(name)
    except (OSError, AttributeError) as exc:  # not a library for this machine, or one without our symbols
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KernelLibraryError(f"the CPU kernel library {path} does not load ({reason}): {_REINSTALL}") from None
    found = lib.segstream_kernels_abi_version()
    if found != ABI_VERSION:
        raise KernelLibraryError(f"the CPU kernel library {path} has ABI version {found}, this segstream needs "
                                 f"{ABI_VERSION}: {_REINSTALL}")
    return lib


def library() -> ctypes.CDLL:
    """The loaded CPU library with argument types set. Raises KernelLibraryError, never compiles."""
    global _library
    with _lock:
        if _library is None:
            _library = _load(library_path())
        return _library


def check() -> None:
    """Load the library now, so a broken install stops a run at start rather than on its first frame."""
    library()
