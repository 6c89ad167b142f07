"""The CUDA build of the kernels: ``kernels.cu`` and the shared headers compiled at run time
with NVRTC and launched with the CUDA driver API on torch's current stream.

Compiled code is cached on disk per source digest, NVRTC version and architecture (see
:mod:`segstream.kernels.sources`) and loaded once per device. A launch only enqueues work: no
host synchronisation, so the ops can be recorded into a CUDA graph (make one call before
capturing, so that compiling and module loading happen outside the capture).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from segstream.kernels import sources

KERNEL_NAMES = (
    "segstream_multilevel_roi_align_f32",
    "segstream_multilevel_roi_align_f16",
    "segstream_nms_rank",
    "segstream_nms_mask",
    "segstream_nms_select",
    "segstream_mask_rle",
)
# No fast math: the arithmetic must round as the CPU build does (see portable.cuh).
NVRTC_OPTIONS = ("--std=c++17",)


class DeviceBuildError(RuntimeError):
    """NVRTC or the CUDA driver refused the kernels; the message holds the log or error."""


def _bindings() -> tuple[Any, Any]:
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError as e:  # pragma: no cover - torch's CUDA wheels ship cuda-bindings
        raise DeviceBuildError("the CUDA build needs the cuda-bindings package (cuda.bindings)") from e
    return driver, nvrtc


def _check(result: tuple, what: str) -> tuple:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise DeviceBuildError(f"{what} failed: {err!r}")
    return tuple(rest)


def nvrtc_version() -> tuple[int, int]:
    _, nvrtc = _bindings()
    major, minor = _check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def supported_archs() -> list[int]:
    """Compute capabilities (e.g. 75, 80, 90) this NVRTC can compile for."""
    _, nvrtc = _bindings()
    (archs,) = _check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")
    return [int(a) for a in archs]


def _arch_number(arch: str | int) -> int:
    if isinstance(arch, int):
        return arch
    digits = "".join(ch for ch in arch if ch.isdigit())
    if not digits:
        raise ValueError(f"not an architecture: {arch!r} (expected e.g. 'sm_80' or 80)")
    return int(digits)


def _out_buffer(size: int) -> bytes:
    """A fresh bytes object for NVRTC to write into.

    NVRTC writes through the buffer's pointer. CPython shares one object for every empty and
    every one-byte bytes value, so a buffer of size <= 1 would overwrite that shared object
    (an empty log is one NUL byte) and corrupt unrelated code, pickling included. Two or more
    bytes are always a new, private object.
    """
    return bytes(max(size, 2))


def compile_module(arch: str | int, target: str = "ptx", ptxas_verbose: bool = False) -> tuple[bytes, str]:
    """Compile ``kernels.cu`` with NVRTC for ``arch`` (``"sm_80"`` or ``80``).

    ``target`` is ``"ptx"`` (virtual ``compute_XX``, text ending in NUL stripped) or
    ``"cubin"`` (``sm_XX``). Returns ``(code, log)``; the log carries the ptxas report when
    ``ptxas_verbose``. Needs no GPU.
    """
    source = (sources.CSRC / sources.DEVICE_SOURCE).read_bytes()
    return compile_source(source, sources.DEVICE_SOURCE, arch, target, ptxas_verbose=ptxas_verbose)


def compile_source(
    source: bytes,
    name: str,
    arch: str | int,
    target: str = "ptx",
    defines: Sequence[tuple[str, str]] = (),
    ptxas_verbose: bool = False,
) -> tuple[bytes, str]:
    """Compile CUDA ``source`` (which may include the kernel headers) with NVRTC; see compile_module."""
    _, nvrtc = _bindings()
    number = _arch_number(arch)
    if target not in ("ptx", "cubin"):
        raise ValueError(f"target must be 'ptx' or 'cubin', not {target!r}")
    prefix = "compute" if target == "ptx" else "sm"
    options = [*NVRTC_OPTIONS, f"--gpu-architecture={prefix}_{number}", f"--include-path={sources.CSRC}",
               *(f"-D{k}={v}" for k, v in defines)]
    if ptxas_verbose:
        options.append("--ptxas-options=-v")
    (prog,) = _check(nvrtc.nvrtcCreateProgram(source, name.encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        encoded = [o.encode() for o in options]
        (compile_err,) = nvrtc.nvrtcCompileProgram(prog, len(encoded), encoded)
        (log_size,) = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log_buf = _out_buffer(log_size)
        _check(nvrtc.nvrtcGetProgramLog(prog, log_buf), "nvrtcGetProgramLog")
        log = log_buf[:log_size].rstrip(b"\0").decode(errors="replace")
        if int(compile_err) != 0:
            raise DeviceBuildError(f"NVRTC failed on {name} for {prefix}_{number} ({compile_err!r}):\n{log}")
        if target == "ptx":
            (size,) = _check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            buf = _out_buffer(size)
            _check(nvrtc.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
            return buf[:size].rstrip(b"\0"), log
        (size,) = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        buf = _out_buffer(size)
        _check(nvrtc.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN")
        return buf[:size], log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def cached_code(arch: int, target: str) -> bytes:
    """``compile_module(arch, target)`` through the on-disk cache."""
    major, minor = nvrtc_version()
    digest = sources.source_digest(f"nvrtc {major}.{minor}|{' '.join(NVRTC_OPTIONS)}")
    path = sources.cache_dir(digest) / f"kernels.{target}_{arch}.{target}"
    if path.exists():
        return path.read_bytes()
    code, _ = compile_module(arch, target)
    sources.publish(path, code)
    return code


def kernel_ptx(kernel: str, arch: str | int = "sm_80") -> str:
    """PTX text of the module holding ``kernel`` (one of :data:`KERNEL_NAMES`) for ``arch``.

    The module holds every kernel; names are unmangled (``extern "C"``), so ``kernel`` is
    also the entry name to launch. This is what a TensorRT AOT plugin returns as its code.
    """
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNEL_NAMES)}")
    return cached_code(_arch_number(arch), "ptx").decode()


@dataclass
class _LoadedModule:
    context: Any  # the device's primary context, which torch's runtime calls use too
    module: Any
    functions: dict[str, Any]


_modules: dict[int, _LoadedModule] = {}
_modules_lock = threading.Lock()


def _loaded(device: torch.device) -> _LoadedModule:
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _modules_lock:
        if index in _modules:
            return _modules[index]
        driver, _ = _bindings()
        major, minor = torch.cuda.get_device_capability(index)
        arch = major * 10 + minor
        supported = supported_archs()
        if arch in supported:
            image = cached_code(arch, "cubin")
        else:  # a GPU newer than this NVRTC: PTX for the newest arch it knows, JIT-compiled by the driver
            older = [a for a in supported if a <= arch]
            if not older:
                raise DeviceBuildError(f"NVRTC {nvrtc_version()} cannot compile for sm_{arch}")
            image = cached_code(max(older), "ptx") + b"\0"
        with torch.cuda.device(index):
            torch.cuda.init()
            # The runtime made the device's primary context current; modules load into it.
            (ctx,) = _check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
            if int(ctx) == 0:
                (dev,) = _check(driver.cuDeviceGet(index), "cuDeviceGet")
                (ctx,) = _check(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
                _check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
            (module,) = _check(driver.cuModuleLoadData(image), "cuModuleLoadData")
            functions = {
                name: _check(driver.cuModuleGetFunction(module, name.encode()), f"cuModuleGetFunction({name})")[0]
                for name in KERNEL_NAMES
            }
        loaded = _LoadedModule(ctx, module, functions)
        _modules[index] = loaded
        return loaded


def pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    """A kernel pointer argument: the tensor's data address, or NULL for an absent optional input."""
    return ctypes.c_void_p(0 if tensor is None else tensor.data_ptr())


def launch(
    device: torch.device,
    kernel: str,
    grid: tuple[int, int, int],
    block: int,
    shared_bytes: int,
    args: Sequence[ctypes._SimpleCData],
) -> None:
    """Enqueue ``kernel`` on ``device``'s current torch stream; ``args`` are ctypes values in
    the kernel's parameter order (pointers as ``c_void_p``)."""
    driver, _ = _bindings()
    loaded = _loaded(device)
    if min(grid) <= 0:
        return
    pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
    (current,) = _check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if int(current) == int(loaded.context):  # the usual case: no device switch needed
        _enqueue(driver, loaded, kernel, grid, block, shared_bytes, torch.cuda.current_stream(device), pointers)
        return
    # Another device's context, or none yet on this thread: switch the way torch does (and back
    # on exit), then make sure the module's context is the current one.
    with torch.cuda.device(device):
        (current,) = _check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if int(current) != int(loaded.context):
            _check(driver.cuCtxSetCurrent(loaded.context), "cuCtxSetCurrent")
        _enqueue(driver, loaded, kernel, grid, block, shared_bytes, torch.cuda.current_stream(device), pointers)


def _enqueue(driver, loaded: _LoadedModule, kernel: str, grid, block: int, shared_bytes: int, stream, pointers) -> None:
    _check(
        driver.cuLaunchKernel(
            loaded.functions[kernel], grid[0], grid[1], grid[2], block, 1, 1, shared_bytes,
            driver.CUstream(stream.cuda_stream), ctypes.addressof(pointers), 0,
        ),
        f"cuLaunchKernel({kernel})",
    )
