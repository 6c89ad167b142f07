"""Building a TensorRT engine from the static graph's ONNX file, and the on-disk engine cache.

An engine is specific to its weights, input size, batch, precision, GPU and TensorRT version, so
all of them are in the cache key:

    $SEGSTREAM_CACHE/tensorrt/<model digest>-<H>x<W>-b<B>-<precision>-<gpu>-trt<version>-k<kernels>.plan

(names and paths in segstream/engines/artifacts.py; k<kernels> is the kernel sources' digest).

Build steps: the segstream plugins are registered (segstream/kernels/tensorrt_plugins.py); the
ONNX nodes of domain `segstream` get the `plugin_namespace` attribute the parser's plugin fallback
reads (and `aot` = 1 on MultilevelRoIAlign when TensorRT has AOT plugins) - the file on disk keeps
the plain contract; the parser builds a strongly typed network, so the graph's own types set the
precision: an fp16 export (trunk in float16, box arithmetic, top-k, NMS and scores in float32)
gives an FP16 engine on TensorRT 10 and 11 alike.

TensorRT is imported only inside the functions that need it. Not executed on the machines this
project is developed on (TensorRT's builder does not install there); the steps before it are tested.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import onnx
from onnx import helper

from segstream.engines import artifacts, custom_ops
from segstream.engines.artifacts import engine_cache_name, onnx_digest  # noqa: F401 (re-exported)
from segstream.engines.models import LoadedModel
from segstream.kernels.tensorrt_plugins import roi_align_plugin_name

MIN_VERSION = (10, 9)
INSTALL_HINT = (
    "install TensorRT >= 10.9 for this CUDA (the `tensorrt` pip package from NVIDIA's package index, "
    "or build the image in docker/)"
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU) is missing; the message says what to install, in one line."""


class TensorRTBuildError(RuntimeError):
    """The builder or parser refused the graph; the message holds the first errors."""


def require_tensorrt():
    """The `tensorrt` module, at least MIN_VERSION; TensorRTUnavailable otherwise."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(f"TensorRT is not installed: {INSTALL_HINT}") from None
    if version_tuple(trt.__version__) < MIN_VERSION:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old: {INSTALL_HINT}")
    return trt


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def prepare_onnx(onnx_bytes: bytes, aot: bool) -> bytes:
    """The ONNX model as TensorRT's parser should see it: segstream nodes marked as plugins.

    Adds `plugin_namespace` = "segstream" to each segstream-domain node; MultilevelRoIAlign becomes
    the plugin of its level count (`MultilevelRoIAlign_<L>L`) and gets `aot` = 1 when `aot`
    (BatchedNMS has no AOT implementation and gets none).
    """
    model = onnx.load_from_string(onnx_bytes)
    for node in model.graph.node:
        if node.domain != custom_ops.DOMAIN:
            continue
        kept = [a for a in node.attribute if a.name not in ("plugin_namespace", "aot")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("plugin_namespace", custom_ops.DOMAIN))
        if node.op_type.startswith(custom_ops.ROI_ALIGN_NODE):
            # One plugin per number of pooled levels (boxes, counts, then the maps).
            node.op_type = roi_align_plugin_name(len(node.input) - 2)
            # Only where it applies: a TensorRT without AOT plugins would hand `aot` to the plugin as a field.
            if aot:
                node.attribute.append(helper.make_attribute("aot", 1))
    return model.SerializeToString()


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def graph_precision(onnx_bytes: bytes) -> str:
    """'fp16' when the graph holds float16 weights (an fp16 export), else 'fp32'."""
    model = onnx.load_from_string(onnx_bytes)
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    return "fp16" if half else "fp32"


def build_serialized_engine(onnx_path: Path, precision: str = "fp32", workspace_mib: int = 2048) -> bytes:
    """Parse `onnx_path` with the segstream plugins and build a serialized engine.

    The network is strongly typed: `precision` (fp32|fp16) must be the graph's own (see graph_precision).
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, not {precision!r}")
    onnx_bytes = Path(onnx_path).read_bytes()
    found = graph_precision(onnx_bytes)
    if found != precision:
        raise TensorRTBuildError(
            f"{onnx_path} is an {found} graph, not {precision}: export it with `segstream export onnx --precision {precision}`"
        )
    trt = require_tensorrt()
    from segstream.kernels import tensorrt_plugins

    aot = tensorrt_plugins.register()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 11 networks are always strongly typed (the flag remains, ignored); 10.x needs it.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(prepare_onnx(onnx_bytes, aot), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise TensorRTBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTBuildError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    return bytes(plan)


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT engines need a CUDA GPU and there is none on this machine")
    return torch.cuda.get_device_name()


def engine_cache_path(model: LoadedModel | None, onnx_path: Path, batch: int, precision: str) -> Path:
    """Where the engine for these inputs is cached (see segstream.engines.artifacts)."""
    trt = require_tensorrt()
    input_size = tuple(model.config.input_size) if model is not None else _onnx_input_size(Path(onnx_path))
    return artifacts.engine_cache_path(model, Path(onnx_path), input_size, batch, precision, gpu_name(), trt.__version__)


def _onnx_input_size(path: Path) -> tuple[int, int]:
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value), int(dims[3].dim_value)


def build_engine_cached(
    model: LoadedModel | None, onnx_path: Path, batch: int, precision: str = "fp32", workspace_mib: int = 2048
) -> Path:
    """The cached engine file for `onnx_path`, built on first use (written atomically)."""
    path = engine_cache_path(model, Path(onnx_path), batch, precision)
    if path.is_file():
        return path
    plan = build_serialized_engine(Path(onnx_path), precision, workspace_mib)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(plan)
    tmp.replace(path)
    return path
