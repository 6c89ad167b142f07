"""`segstream export onnx|tensorrt|openvino`: the static Mask R-CNN as an ONNX file or a TensorRT engine,
or the model as a deployable OpenVINO artifact directory (segstream/engines/openvino_export.py).

    segstream export onnx --model shapes --input-size 384x640 --batch 1 -o shapes.onnx
    segstream export tensorrt --model shapes --input-size 384x640 --batch 1 --precision fp16 -o shapes.plan

fp16 exports a graph whose trunk is float16 (Cast nodes at its borders); TensorRT builds it as a
strongly typed network, so the types in the file are the precision of the engine.

The ONNX contract (design.md §6) is the static graph's (segstream/engines/static_graph.py) with the
two `segstream`-domain nodes of segstream/engines/custom_ops.py. Exported files are also cached under
`$SEGSTREAM_CACHE/onnx/` (default ~/.cache/segstream) keyed by model digest, input size, batch and
precision, so the onnxruntime and tensorrt engines reuse them.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from pathlib import Path

import torch

from segstream.engines import custom_ops
from segstream.engines.artifacts import GRAPH_VERSION, cache_root, model_digest, onnx_cache_path  # noqa: F401 (re-exported)
from segstream.engines.models import LoadedModel, ModelError, apply_test_thresholds, load_model
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


def _input_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW (e.g. 384x640)") from None
    return height, width


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segstream export", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="target", required=True)
    for target, help_text in (("onnx", "write the static graph as ONNX"), ("tensorrt", "build a TensorRT engine")):
        p = sub.add_parser(target, help=help_text)
        p.add_argument("--model", default="shapes", help="model name or .safetensors checkpoint (default: shapes)")
        p.add_argument("--weights", help="weights file for a torchvision preset")
        p.add_argument("--input-size", type=_input_size, help="network input HxW, multiples of 32 (default: the model's)")
        p.add_argument("--batch", type=int, default=1, help="fixed batch size of the graph (default: 1)")
        p.add_argument("--score-threshold", type=float, help="override the model's detection score threshold")
        p.add_argument("-o", "--output", help="output file (default: only the cache)")
        p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                       help="trunk precision: fp16 runs convolutions and heads in half precision (default: fp32)")
        if target == "tensorrt":
            p.add_argument("--onnx", help="ONNX file to build from (default: exported and cached)")
            p.add_argument("--workspace-mib", type=int, default=2048, help="builder workspace limit (MiB)")
    p = sub.add_parser("openvino", help="write a deployable artifact directory (runs on a base install: --model DIR)")
    p.add_argument("--model", default="shapes", help="model name or .safetensors checkpoint (default: shapes)")
    p.add_argument("--weights", help="weights file for a torchvision preset")
    p.add_argument("--input-size", type=_input_size, help="network input HxW, multiples of 32 (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="fixed batch size of the trunk (default: 1)")
    p.add_argument("--score-threshold", type=float, help="override the model's detection score threshold")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="fp32 (default); bf16 (fp32 weights, bf16 arithmetic where the CPU has it); int8 (NNCF)")
    p.add_argument("--calibration-frames", type=int, default=48,
                   help="int8: images of the shapes domain to calibrate on (default: 48)")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write (new, empty, or an artifact)")
    return parser


def _export_openvino(args: argparse.Namespace, model: LoadedModel) -> int:
    from segstream.engines.openvino_build import CALIBRATION_SEED, OpenVinoUnavailable, calibration_images
    from segstream.engines.openvino_export import export_artifact

    calibration, note = None, None
    if args.precision == "int8":
        # The engines take calibration images as data; here (the command) is where they come from.
        calibration = calibration_images(model, args.calibration_frames, CALIBRATION_SEED)
        note = f"{args.calibration_frames} shapes-domain images, seed {CALIBRATION_SEED:#x}"
    name = Path(args.model).stem if args.model.endswith(".safetensors") else args.model
    try:
        folder = export_artifact(model, args.output, name, args.precision, args.batch, calibration, note)
    except OpenVinoUnavailable as exc:
        print(f"segstream export openvino: {exc}", file=sys.stderr)
        return 2
    height, width = model.config.input_size
    print(f"wrote {folder} ({args.precision}, batch {args.batch}, input {height}x{width}); run it with --model {folder}")
    return 0


def _deliver(cached: Path, output: str | None) -> Path:
    """The cached artefact, copied to `output` when the user named one."""
    if not output:
        return cached
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(cached.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.target == "tensorrt":
        from segstream.engines.tensorrt_build import TensorRTUnavailable, gpu_name, require_tensorrt

        try:  # before the export: without TensorRT or a GPU there is nothing to build
            require_tensorrt()
            gpu_name()
        except TensorRTUnavailable as exc:
            print(f"segstream export tensorrt: {exc}", file=sys.stderr)
            return 2
    try:
        model = load_model(args.model, weights=args.weights, input_size=args.input_size)
        if args.score_threshold is not None:
            model.config = model.config.replace(score_threshold=args.score_threshold)
            apply_test_thresholds(model.network, model.config)
        if args.target == "openvino":
            return _export_openvino(args, model)
        if args.target == "onnx":
            path = _deliver(cached_onnx(model, args.batch, args.precision), args.output)
            print(f"wrote {path} (batch {args.batch}, input {model.config.input_size[0]}x{model.config.input_size[1]})")
            return 0
        from segstream.engines.tensorrt_build import TensorRTBuildError, TensorRTUnavailable, build_engine_cached

        try:
            onnx_path = Path(args.onnx) if args.onnx else cached_onnx(model, args.batch, args.precision)
            plan = build_engine_cached(
                model, onnx_path, args.batch, args.precision, workspace_mib=args.workspace_mib
            )
        except (TensorRTUnavailable, TensorRTBuildError) as exc:
            print(f"segstream export tensorrt: {exc}", file=sys.stderr)
            return 2
        plan = _deliver(plan, args.output)
        print(f"wrote {plan} ({args.precision}, batch {args.batch})")
        return 0
    except (ModelError, ExportError, ValueError) as exc:
        print(f"segstream export: {exc}", file=sys.stderr)
        return 2
