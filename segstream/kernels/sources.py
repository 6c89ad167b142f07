"""The kernel sources shipped with the package, their content digest, and the build cache.

Both builds (the CPU shared library and the NVRTC cubins) are cached under
``$SEGSTREAM_CACHE/kernels/<digest>/`` (default ``~/.cache/segstream``), where the
digest covers every source file and the build's own description (compiler, flags,
architecture). Editing a header therefore rebuilds; nothing stale is ever loaded.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
HEADERS = ("portable.cuh", "roi_align.cuh", "nms.cuh", "mask_rle.cuh", "rle.h")
DEVICE_SOURCE = "kernels.cu"
HOST_SOURCE = "host.cpp"


def source_digest(build_description: str) -> str:
    """Hex digest of all kernel sources plus ``build_description`` (compiler, flags, target)."""
    h = hashlib.sha256()
    for name in (*HEADERS, DEVICE_SOURCE, HOST_SOURCE):
        h.update(name.encode())
        h.update(b"\0")
        h.update((CSRC / name).read_bytes())
        h.update(b"\0")
    h.update(build_description.encode())
    return h.hexdigest()[:20]


def cache_root() -> Path:
    """segstream's cache: $SEGSTREAM_CACHE, else $XDG_CACHE_HOME/segstream, else ~/.cache/segstream
    (every cache of the package lives under it: kernels, ONNX, OpenVINO, TensorRT)."""
    explicit = os.environ.get("SEGSTREAM_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segstream"


def cache_dir(digest: str) -> Path:
    """The directory for one build's artefacts (created)."""
    path = cache_root() / "kernels" / digest
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the whole new one.

    Two processes building at once both publish identical bytes; the last rename wins.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
