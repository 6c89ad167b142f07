"""`segstream export onnx|tensorrt|openvino`: the static Mask R-CNN as an ONNX file or a TensorRT engine,
or the model as a deployable OpenVINO artifact directory (segstream/engines/openvino_export.py).

    segstream export onnx --model shapes --input-size 384x640 --batch 1 -o shapes.onnx
    segstream export tensorrt --model shapes --input-size 384x640 --batch 1 --precision fp16 -o shapes.plan
    segstream export openvino --model maskrcnn_resnet50_fpn --precision int8 --calibration street/ -o coco-int8/

int8 quantizes on calibration frames of the model's own domain, passed in with `--calibration DIR|VIDEO`
(a folder of images or a video file). The bundled shapes model has its own: without --calibration it
is calibrated on `--calibration-frames` frames rendered by segstream.shapes (here, in the command: the
engines never reach for a domain's data). Any other model without --calibration is one clear error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segstream.engines.export import PRECISIONS, ExportError, cached_onnx
from segstream.engines.models import LoadedModel, ModelError, apply_test_thresholds, load_model

#: The model whose calibration frames the command can render itself (segstream.shapes).
SHAPES_MODEL = "shapes"
CALIBRATION_FRAMES = 48


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
    p.add_argument("--calibration", metavar="DIR|VIDEO",
                   help="int8: frames of the model's own domain to quantize on, a folder of images or a video "
                        "file (needed for every model but the bundled shapes one)")
    p.add_argument("--calibration-frames", type=int, default=CALIBRATION_FRAMES,
                   help=f"int8: how many calibration frames to use (default: {CALIBRATION_FRAMES})")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write (new, empty, or an artifact)")
    return parser


def _calibration(args: argparse.Namespace, model: LoadedModel) -> tuple[list, str]:
    """The int8 calibration inputs f32 [1,3,H,W] and the note the artifact's sidecar keeps about them."""
    from segstream.engines.calibration import network_inputs, read_frames

    if args.calibration:
        frames = read_frames(args.calibration, args.calibration_frames)
        return network_inputs(model.config, frames), f"{len(frames)} frames of {Path(args.calibration).name}"
    if args.calibration_frames < 1:
        raise ExportError(f"--calibration-frames: {args.calibration_frames} must be >= 1")
    from segstream.shapes.dataset import CALIBRATION_SEED, calibration_frames

    frames = calibration_frames(args.calibration_frames, CALIBRATION_SEED)
    return network_inputs(model.config, frames), f"{len(frames)} shapes-domain images, seed {CALIBRATION_SEED:#x}"


def _check_calibration_named(args: argparse.Namespace) -> None:
    """One clear line, before a model is loaded, for an int8 export without calibration frames."""
    if args.target == "openvino" and args.precision == "int8" and not args.calibration and args.model != SHAPES_MODEL:
        raise ExportError(f"--precision int8 for {args.model} needs --calibration DIR|VIDEO: frames of what the "
                          f"model will see (a folder of images or a video), to quantize on")


def _export_openvino(args: argparse.Namespace, model: LoadedModel) -> int:
    from segstream.engines.openvino_build import OpenVinoUnavailable
    from segstream.engines.openvino_export import export_artifact

    calibration, note = (None, None) if args.precision != "int8" else _calibration(args, model)
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
        _check_calibration_named(args)
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
    except (ModelError, ExportError, ValueError) as exc:  # CalibrationError is a ValueError
        print(f"segstream export: {exc}", file=sys.stderr)
        return 2
