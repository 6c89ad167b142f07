"""The static Mask R-CNN as an ONNX file (and its cache); the command is segstream/commands/export.py.

fp16 exports a graph whose trunk is float16 (Cast nodes at its borders); TensorRT builds it as a
strongly typed network, so the types in the file are the precision of the engine.

The ONNX contract (design.md §6) is the static graph's (segstream/engines/static_graph.py) with the
two `segstream`-domain nodes of segstream/engines/custom_ops.py. Exported files are also cached under
`$SEGSTREAM_CACHE/onnx/` (default ~/.cache/segstream) keyed by model digest, input size, batch and
precision, so the onnxruntime and tensorrt engines reuse them.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch

from segstream.engines import custom_ops
from segstream.engines.artifacts import GRAPH_VERSION, cache_root, model_digest, onnx_cache_path  # noqa: F401 (re-exported)
from segstream.engines.models import LoadedModel
from segstream.engines.static_graph import INPUT_NAMES, OUTPUT_NAMES, StaticMaskRCNN


class ExportError(RuntimeError):
    """An export cannot be done; the message is one line for the user."""


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def export_onnx(model: LoadedModel, path: str | Path, batch: int, precision: str = "fp32") -> Path:
    """Trace the static graph of `model` at batch `batch` and write it to `path` (ONNX opset 17).

    Inputs images f32 [batch,3,H,W] and image_sizes i32 [batch,2]; outputs as static_graph.OUTPUT_NAMES.
    precision fp16: the convolutional trunk and heads in float16 (for TensorRT; see StaticMaskRCNN),
    inputs, outputs and all box arithmetic still float32.
    The file is written next to its destination and renamed into place, so readers never see half a file.
    """
    if batch < 1:
        raise ExportError(f"--batch: {batch} must be >= 1")
    if precision not in PRECISIONS:
        raise ExportError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    custom_ops.register_onnx_symbolics()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = model.network
    if any(p.device.type != "cpu" for p in network.parameters()):
        # Traced on the CPU; a copy, so an engine already running this network on a GPU keeps it there.
        network = copy.deepcopy(network).to("cpu")
    network.eval()
    graph = StaticMaskRCNN(network, model.config, PRECISIONS[precision]).eval()
    height, width = model.config.input_size
    images = torch.zeros((batch, 3, height, width))
    image_sizes = torch.tensor([[height, width]] * batch, dtype=torch.int32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns about its own deprecation and about traced constants
            # (the static sizes are meant to be constants); neither is actionable here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (images, image_sizes),
                str(tmp),
                dynamo=False,
                opset_version=custom_ops.ONNX_OPSET,
                custom_opsets={custom_ops.DOMAIN: 1},
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                do_constant_folding=True,
            )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cached_onnx(model: LoadedModel, batch: int, precision: str = "fp32") -> Path:
    """The cached ONNX file of `model` at `batch` and trunk `precision`, exported on first use."""
    path = onnx_cache_path(model, batch, precision)
    if not path.is_file():
        export_onnx(model, path, batch, precision)
    return path
