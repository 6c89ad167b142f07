"""Opening an engine of a given kind: torch, static, onnxruntime, openvino, tensorrt or auto, all
behind the Engine protocol.

`auto` picks the fastest engine installed and verified for the device: on a CPU, OpenVINO when it
imports and compiles the model (the compiled model is the one the run then uses), torch otherwise;
on a GPU, torch. The chosen engine's `name` says which, and why when auto fell back to torch.
"""

from __future__ import annotations

import os

import torch

from segstream.engines.models import LoadedModel
from segstream.engines.protocol import Engine, EngineError

__all__ = ["ENGINE_KINDS", "EngineError", "open_engine", "resolve_device", "usable_cores"]  # EngineError re-exported: older imports
ENGINE_KINDS = ("auto", "torch", "static", "onnxruntime", "openvino", "tensorrt")
#: Precisions each kind offers (auto: those of the engine it picks).
PRECISIONS = {
    "torch": ("fp32",),
    "static": ("fp32", "fp16", "bf16"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
    "tensorrt": ("fp32", "fp16"),
}


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda: no CUDA GPU is available on this machine (use --device cpu)")
    return torch.device(device)


def open_engine(
    kind: str,
    model: LoadedModel,
    device: str = "cpu",
    max_batch: int = 1,
    onnx_path: str | None = None,
    precision: str = "fp32",
    threads: int | None = None,
) -> Engine:
    """An Engine of `kind` for `model` (the ONNX/OpenVINO/TensorRT kinds build or reuse a cached artefact).

    threads: the engine's compute threads (OpenVINO inference threads; None: the engine's default).
    """
    target = resolve_device(device)
    if kind == "auto":
        return _auto_engine(model, target, max_batch, precision, threads)
    offered = PRECISIONS.get(kind)
    if offered is not None and precision not in offered and not (kind == "torch" and precision == "fp16"):
        # (torch has always ignored fp16, which configs written for tensorrt carry.)
        raise EngineError(f"--precision {precision}: --engine {kind} offers {', '.join(offered)}")
    if kind == "openvino":
        from segstream.engines.openvino_engine import OpenVinoEngine

        return OpenVinoEngine(model, target, max_batch, precision=precision, threads=threads)
    if kind == "torch":
        from segstream.engines.torch_engine import TorchEngine

        return TorchEngine(model, target, max_batch)
    if kind == "static":
        from segstream.engines.static_engine import StaticEngine

        engine = StaticEngine(model, target, max_batch, precision=precision)
        # Every CUDA graph is captured before frames flow: a capture synchronises the whole device,
        # which mid-run would stall every stage's stream (nothing on a CPU).
        engine.warm_up()
        return engine
    if kind == "onnxruntime":
        try:
            from segstream.engines.onnxruntime_engine import OnnxRuntimeEngine
        except ImportError as exc:
            raise EngineError(f"--engine onnxruntime needs the onnx extras: pip install 'segstream[onnx]' ({exc})") from None
        return OnnxRuntimeEngine(model, target, max_batch, onnx_path=onnx_path)
    if kind == "tensorrt":
        try:
            from segstream.engines.tensorrt_engine import TensorRTEngine
        except ImportError as exc:
            raise EngineError(f"--engine tensorrt is not available ({exc})") from None
        return TensorRTEngine(model, target, max_batch, onnx_path=onnx_path, precision=precision)
    raise EngineError(f"unknown engine {kind!r}: use one of {', '.join(ENGINE_KINDS)}")


def _auto_engine(model: LoadedModel, device: torch.device, max_batch: int, precision: str, threads: int | None) -> Engine:
    """OpenVINO on a CPU when it is installed and compiles this model; torch otherwise (see the module docstring)."""
    from segstream.engines.torch_engine import TorchEngine

    if device.type != "cpu":
        if precision not in ("fp32", "fp16"):  # (fp16 ignored, as the torch engine always has)
            raise EngineError(f"--precision {precision}: on {device.type} the auto engine is torch, which runs fp32")
        return TorchEngine(model, device, max_batch)
    if precision == "fp16":
        raise EngineError("--precision fp16 is for --engine tensorrt; on the CPU use fp32, bf16 or int8")
    try:
        from segstream.engines.openvino_engine import OpenVinoEngine

        engine = OpenVinoEngine(model, device, max_batch, precision=precision, threads=threads)
        # Verified: one inference on a blank input (which also warms the compiled model up).
        height, width = model.config.input_size
        engine.infer(torch.zeros((1, 3, height, width)), [(height, width)])
    except Exception as exc:  # anything OpenVINO raises means: not verified here, use torch
        reason = str(exc).splitlines()[0].removeprefix("--engine openvino: ") if str(exc) else type(exc).__name__
        if precision != "fp32":
            raise EngineError(f"--precision {precision} needs the openvino engine, which is unavailable: {reason}") from None
        fallback = TorchEngine(model, device, max_batch)
        fallback.name = f"torch (auto: openvino unavailable: {reason})"
        return fallback
    engine.name = f"{engine.name} (auto)"
    return engine
