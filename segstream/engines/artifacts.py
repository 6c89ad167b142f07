"""Where exported ONNX files and TensorRT engines are cached, and the keys that name them.

One module for both caches (export.py writes ONNX files, tensorrt_build.py builds engines; both
read their paths here, so neither imports the other for them):

    $SEGSTREAM_CACHE/onnx/<model digest>-<H>x<W>-b<B>[-fp16].onnx
    $SEGSTREAM_CACHE/tensorrt/<model digest>-<H>x<W>-b<B>-<precision>-<gpu>-trt<version>-k<kernels>.plan

The model digest covers the weights, the model config and the graph version; `k<kernels>` is the
digest of the kernel sources and of the plugin module, which are compiled into an engine (AOT
RoIAlign PTX), so an edited kernel rebuilds the engine instead of loading stale code.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from segstream.engines.checkpoint import tensors_digest
from segstream.engines.models import LoadedModel

#: Bump when the exported graph changes for the same weights, so stale cached files are not reused.
GRAPH_VERSION = "1"


def cache_root() -> Path:
    """$SEGSTREAM_CACHE, else $XDG_CACHE_HOME/segstream, else ~/.cache/segstream (shared with
    segstream.kernels' build cache)."""
    from segstream.kernels.sources import cache_root as root

    return root()


def model_digest(model: LoadedModel) -> str:
    """SHA-256 (hex, 16 chars) over the weights and the model config: what makes two graphs the same."""
    digest = hashlib.sha256()
    digest.update(tensors_digest(model.network.state_dict()).encode())
    digest.update(model.config.to_json().encode())
    digest.update(GRAPH_VERSION.encode())
    return digest.hexdigest()[:16]


def onnx_cache_path(model: LoadedModel, batch: int, precision: str = "fp32") -> Path:
    height, width = model.config.input_size
    suffix = "" if precision == "fp32" else f"-{precision}"
    return cache_root() / "onnx" / f"{model_digest(model)}-{height}x{width}-b{batch}{suffix}.onnx"


def onnx_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def kernels_digest() -> str:
    """Digest (12 hex chars) of the kernel sources and the TensorRT plugin module."""
    from segstream.kernels import sources, tensorrt_plugins

    digest = hashlib.sha256(sources.source_digest("tensorrt-plugins").encode())
    digest.update(Path(tensorrt_plugins.__file__).read_bytes())
    return digest.hexdigest()[:12]


def engine_cache_name(
    model_digest: str, input_size: tuple[int, int], batch: int, precision: str, gpu_name: str, trt_version: str,
    kernels: str,
) -> str:
    """File name of a cached engine; every field that makes two engines differ is in it."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    height, width = input_size
    return f"{model_digest}-{height}x{width}-b{batch}-{precision}-{gpu}-trt{trt_version}-k{kernels}.plan"


def engine_cache_path(
    model: LoadedModel | None, onnx_path: Path, input_size: tuple[int, int], batch: int, precision: str,
    gpu_name: str, trt_version: str,
) -> Path:
    """Where the engine for these inputs is cached (the ONNX file's digest stands in without a model,
    or when the file is not the model's cached export)."""
    if model is not None and Path(onnx_path) == onnx_cache_path(model, batch, precision):
        digest = model_digest(model)
    else:
        digest = onnx_digest(Path(onnx_path))
    name = engine_cache_name(digest, input_size, batch, precision, gpu_name, trt_version, kernels_digest())
    return cache_root() / "tensorrt" / name
