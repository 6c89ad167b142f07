"""Test-only: compile variants of the CPU kernels with the system C++ compiler (never the running path).

The installed library comes from CMake at wheel-build time (segstream.kernels.host_build); the
kernel tests still compile edited or broken sources to check the build cache and the compiler's
error reporting, with the same flags (host_build.CXX_FLAGS), into ``$SEGSTREAM_CACHE/kernels/<digest>/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from segstream.kernels import host_build, sources


class BuildError(RuntimeError):
    """The C++ compiler failed on the kernel sources; the message holds its output."""


def compiler() -> str:
    """The C++ compiler used: ``$CXX``, else ``c++``/``g++`` on PATH."""
    for candidate in (os.environ.get("CXX"), "c++", "g++"):
        if candidate and shutil.which(candidate):
            return candidate
    raise BuildError("no C++ compiler found (set CXX or install g++)")


def _compiler_identity(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def compiled_library_path() -> Path:
    """Path of a library compiled from ``sources.CSRC``, compiling it first if this digest has none yet."""
    cxx = compiler()
    digest = sources.source_digest(f"host|{_compiler_identity(cxx)}|{' '.join(host_build.CXX_FLAGS)}")
    target = sources.cache_dir(digest) / host_build.LIBRARY_NAME
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{host_build.LIBRARY_NAME}.", suffix=".tmp")
    os.close(fd)
    try:
        cmd = [cxx, *host_build.CXX_FLAGS, f"-I{sources.CSRC}", str(sources.CSRC / sources.HOST_SOURCE), "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(f"{' '.join(cmd)}\n{result.stderr}")
        os.replace(tmp, target)  # atomic: a concurrent builder's identical file may win, harmlessly
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
