"""Opening an engine of a given kind: torch, static, onnxruntime or tensorrt, all behind the Engine protocol."""

from __future__ import annotations

import torch

from segstream.engines.models import LoadedModel
from segstream.engines.protocol import Engine, EngineError

__all__ = ["ENGINE_KINDS", "EngineError", "open_engine", "resolve_device"]  # EngineError re-exported: older imports

ENGINE_KINDS = ("torch", "static", "onnxruntime", "tensorrt")


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
) -> Engine:
    """An Engine of `kind` for `model` (the ONNX/TensorRT kinds build or reuse a cached artefact)."""
    target = resolve_device(device)
    if kind == "torch":
        from segstream.engines.torch_engine import TorchEngine

        return TorchEngine(model, target, max_batch)
    if kind == "static":
        from segstream.engines.static_engine import StaticEngine

        return StaticEngine(model, target, max_batch, precision=precision)
    if precision == "bf16" and kind != "static":
        raise EngineError(f"--precision bf16 is for --engine static, not {kind}")
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
