"""The onnxruntime backend: the exported static graph on the CPU, custom nodes on the CPU kernels.

ONNX Runtime loads custom operators only from a compiled library built against its C API headers,
which its Python wheel does not ship (and onnxruntime-extensions' Python operators have a fixed
domain and pass tensors through Python lists). So the engine binds the two `segstream` nodes itself:
`PartitionedGraph` cuts the ONNX graph at them into segments of standard operators, each run by its
own `InferenceSession`, and runs each custom node on `segstream.kernels` (the C++ the CUDA kernels
share) through zero-copy numpy/torch views. Every standard node runs in ONNX Runtime; the graph file
is exactly the one TensorRT builds from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, shape_inference

from segstream.engines import custom_ops
from segstream.engines.models import LoadedModel
from segstream.engines.protocol import Detections
from segstream.engines.static_graph import INPUT_NAMES, OUTPUT_NAMES, padded_image_sizes, split_detections

CustomNode = Callable[[onnx.NodeProto, list[np.ndarray]], list[np.ndarray]]


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _run_roi_align(node: onnx.NodeProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    a = _attributes(node)
    boxes, counts, *features = (torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)
    pooled = custom_ops.run_multilevel_roi_align(
        features, boxes, counts, int(a["output_size"]), [float(s) for s in a["spatial_scales"]],
        int(a.get("sampling_ratio", 2)), bool(a.get("aligned", 0)), float(a.get("canonical_scale", 224.0)),
        int(a.get("canonical_level", 4)),
    )
    return [pooled.numpy()]


def _run_nms(node: onnx.NodeProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    a = _attributes(node)
    boxes, scores, classes = (torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)
    result = custom_ops.run_batched_nms(
        boxes, scores, classes, float(a["iou_threshold"]), float(a["score_threshold"]), int(a["max_outputs"])
    )
    return [t.numpy() for t in result]


#: The CPU implementations of the custom nodes, by (domain, op_type).
CUSTOM_NODES: dict[tuple[str, str], CustomNode] = {
    (custom_ops.DOMAIN, custom_ops.ROI_ALIGN_NODE): _run_roi_align,
    (custom_ops.DOMAIN, custom_ops.NMS_NODE): _run_nms,
}


@dataclass
class _Segment:
    session: ort.InferenceSession
    inputs: list[str]
    outputs: list[str]


class PartitionedGraph:
    """An ONNX model run as ORT segments of standard operators and CPU calls of the custom nodes.

    Nodes are placed in stages: a standard node runs in the earliest even stage after every node it
    depends on; a custom node in the earliest odd one. Each even stage becomes one InferenceSession
    (its Constant nodes and initializers copied in), each odd stage calls CUSTOM_NODES. With the
    Mask R-CNN graph that is five sessions and four custom calls per batch.
    """

    def __init__(self, model: onnx.ModelProto, threads: int = 0) -> None:
        model = shape_inference.infer_shapes(model)
        graph = model.graph
        self.input_names = [i.name for i in graph.input]
        self.output_names = [o.name for o in graph.output]
        types = {v.name: v.type for v in (*graph.input, *graph.output, *graph.value_info)}
        initializers = {t.name: t for t in graph.initializer}
        constants = {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
        # The exporter routes shared weights through Identity nodes; reading the weight directly keeps
        # those nodes (and copies of their outputs between sessions) out of the segments.
        alias = {
            n.output[0]: n.input[0] for n in graph.node
            if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in self.output_names
        }
        nodes = []
        for node in graph.node:
            if node.op_type == "Identity" and node.output[0] in alias:
                continue
            if any(i in alias for i in node.input):
                node = onnx.NodeProto.FromString(node.SerializeToString())
                node.input[:] = [alias.get(i, i) for i in node.input]
            nodes.append(node)

        level: dict[str, int] = {name: 0 for name in (*self.input_names, *initializers)}
        stages: dict[int, list[onnx.NodeProto]] = {}
        for node in nodes:
            if node.op_type == "Constant":
                continue
            deps = max((level.get(i, 0) for i in node.input if i and i not in constants), default=0)
            custom = (node.domain, node.op_type) in CUSTOM_NODES
            if node.domain not in ("", "ai.onnx") and not custom:
                raise ValueError(f"no CPU implementation for node {node.domain}::{node.op_type}")
            stage = deps + 1 if (deps % 2 == 0) == custom else deps
            stages.setdefault(stage, []).append(node)
            for out in node.output:
                # A custom node's outputs are consumed from the next even stage on.
                level[out] = stage + 1 if custom else stage

        consumers: dict[str, set[int]] = {}
        for stage, nodes in stages.items():
            for node in nodes:
                for i in node.input:
                    consumers.setdefault(i, set()).add(stage)
        graph_outputs = set(self.output_names)

        self.steps: list[tuple[str, object]] = []
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        for stage in sorted(stages):
            nodes = stages[stage]
            if stage % 2:
                self.steps.extend(("custom", node) for node in nodes)
                continue
            produced = {o for n in nodes for o in n.output}
            needed = [i for n in nodes for i in n.input if i and i not in produced]
            inputs = list(dict.fromkeys(i for i in needed if i not in initializers and i not in constants))
            outputs = [o for o in dict.fromkeys(produced) if o in graph_outputs or consumers.get(o, set()) - {stage}]
            used_constants = [constants[i] for i in dict.fromkeys(needed) if i in constants]
            sub = helper.make_graph(
                [*used_constants, *nodes],
                f"{graph.name}_stage{stage}",
                [_value_info(name, types) for name in inputs],
                [_value_info(name, types) for name in outputs],
                [initializers[i] for i in dict.fromkeys(needed) if i in initializers],
            )
            sub_model = helper.make_model(sub, opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])
            sub_model.ir_version = model.ir_version
            session = ort.InferenceSession(
                sub_model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self.steps.append(("session", _Segment(session, inputs, outputs)))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: graph input name -> array; returns graph output name -> array."""
        values = dict(feeds)
        for kind, step in self.steps:
            if kind == "session":
                results = step.session.run(step.outputs, {name: values[name] for name in step.inputs})
                values.update(zip(step.outputs, results))
            else:
                node = step
                outs = CUSTOM_NODES[(node.domain, node.op_type)](node, [values[i] for i in node.input])
                values.update(zip(node.output, outs))
        return {name: values[name] for name in self.output_names}


def _value_info(name: str, types: dict[str, onnx.TypeProto]) -> onnx.ValueInfoProto:
    if name not in types:
        raise ValueError(f"the ONNX graph gives no type for {name!r}")
    info = onnx.ValueInfoProto()
    info.name = name
    info.type.CopyFrom(types[name])
    return info


class OnnxRuntimeEngine:
    """Engine protocol over the exported static graph in ONNX Runtime (CPU).

    model: the loaded model (its config gives input size and class names; its weights are exported
        when onnx_path is None, into the cache of segstream.engines.export).
    max_batch: the graph's fixed batch; smaller batches are padded and their outputs sliced.
    onnx_path: an exported file to use instead; its batch and input size must fit.
    """

    name = "onnxruntime"

    def __init__(
        self, model: LoadedModel, device: str | torch.device = "cpu", max_batch: int = 1, onnx_path: str | None = None,
        threads: int = 0,
    ) -> None:
        from segstream.engines.protocol import EngineError

        self.config = model.config
        self.device = torch.device(device)
        if self.device.type != "cpu":
            raise EngineError("--engine onnxruntime runs on the CPU: use --device cpu (or --engine tensorrt on a GPU)")
        if onnx_path is None:
            from segstream.engines.export import cached_onnx

            path = cached_onnx(model, max_batch)
        else:
            path = Path(onnx_path)
            if not path.is_file():
                raise EngineError(f"--onnx: file not found: {path}")
        self.onnx_path = path
        graph = onnx.load(str(path))
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
        if [*shapes] != list(INPUT_NAMES) or [o.name for o in graph.graph.output] != list(OUTPUT_NAMES):
            raise EngineError(f"--onnx: {path} is not a segstream static graph (inputs {[*shapes]})")
        batch, _, height, width = shapes["images"]
        if (height, width) != tuple(self.config.input_size):
            raise EngineError(
                f"--onnx: {path} takes {height}x{width} input, the model {self.config.input_size[0]}x{self.config.input_size[1]}"
            )
        if batch < max_batch:
            raise EngineError(f"--onnx: {path} has batch {batch}, fewer than the requested {max_batch}")
        self.max_batch = batch
        try:
            self.graph = PartitionedGraph(graph, threads=threads)
        except ValueError as exc:
            raise EngineError(f"--onnx: {path}: {exc}") from None

    @torch.inference_mode()
    def infer(self, images: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """See Engine.infer: images float32 [B, 3, H, W] normalised and padded, on the CPU."""
        count = images.shape[0]
        sizes = padded_image_sizes(image_sizes, self.max_batch, self.config.input_size).numpy()
        height, width = self.config.input_size
        feed = np.zeros((self.max_batch, 3, height, width), dtype=np.float32)
        feed[:count] = images.detach().to("cpu", torch.float32).numpy()
        out = {k: torch.from_numpy(v) for k, v in self.graph.run({"images": feed, "image_sizes": sizes}).items()}
        counts = out["num_detections"][:count].tolist()
        return split_detections(counts, out["boxes"], out["scores"], out["classes"], out["masks"])

    def close(self) -> None:
        """Nothing to release early: the ONNX Runtime sessions go with the engine object."""
