"""The tensorrt backend: the static graph built into a TensorRT engine, run on torch's CUDA stream.

The engine file comes from segstream.engines.tensorrt_build's cache (built on first use from the
cached ONNX export, or from `onnx_path`). Inputs and outputs are torch tensors bound once to the
execution context; a call copies the batch in, enqueues the engine on the current stream and
slices each image's detections (one host read: the detection counts).

Importing this module needs no TensorRT; constructing an engine without it raises EngineError with
one line naming what to install. Not executed on the machines this project is developed on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from segstream.engines.models import LoadedModel
from segstream.engines.protocol import Detections
from segstream.engines.static_graph import INPUT_NAMES, OUTPUT_NAMES, padded_image_sizes, split_detections
from segstream.engines.tensorrt_build import TensorRTBuildError, TensorRTUnavailable, build_engine_cached, require_tensorrt


def _engine_error(message: str) -> Exception:
    from segstream.engines.protocol import EngineError

    return EngineError(message)


class TensorRTEngine:
    """Engine protocol over a serialized TensorRT engine of the static graph.

    device: a CUDA device. max_batch: the engine's fixed batch (smaller batches are padded).
    onnx_path: build from this ONNX file instead of exporting `model`.
    precision: fp32 or fp16 (the fp16 export: convolutions and heads in FP16, decoding and NMS in FP32).
    """

    name = "tensorrt"

    def __init__(
        self, model: LoadedModel, device: str | torch.device = "cuda", max_batch: int = 1,
        onnx_path: str | None = None, precision: str = "fp32",
    ) -> None:
        try:
            trt = require_tensorrt()
        except TensorRTUnavailable as exc:
            raise _engine_error(f"--engine tensorrt: {exc}") from None
        self.config = model.config
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise _engine_error("--engine tensorrt runs on a GPU: use --device cuda")
        self.max_batch = max_batch
        self.precision = precision
        from segstream.engines.export import cached_onnx
        from segstream.kernels import tensorrt_plugins

        # JIT plugins are looked up in the registry when the engine is deserialized.
        tensorrt_plugins.register()
        source = Path(onnx_path) if onnx_path else cached_onnx(model, max_batch, precision)
        try:
            self.plan_path = build_engine_cached(model if onnx_path is None else None, source, max_batch, precision)
        except (TensorRTUnavailable, TensorRTBuildError) as exc:
            raise _engine_error(f"--engine tensorrt: {exc}") from None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if self._engine is None:
                raise _engine_error(f"--engine tensorrt: cannot load {self.plan_path} (built by another TensorRT?)")
            self._context = self._engine.create_execution_context()
            self.buffers: dict[str, torch.Tensor] = {}
            for index in range(self._engine.num_io_tensors):
                name = self._engine.get_tensor_name(index)
                shape = tuple(self._engine.get_tensor_shape(name))
                dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(name))
                self.buffers[name] = torch.zeros(shape, dtype=dtype, device=self.device)
                self._context.set_tensor_address(name, self.buffers[name].data_ptr())
        missing = set(INPUT_NAMES + OUTPUT_NAMES) - set(self.buffers)
        if missing:
            raise _engine_error(f"--engine tensorrt: {self.plan_path} lacks tensors {sorted(missing)}")
        batch, _, height, width = self.buffers["images"].shape
        if (height, width) != tuple(self.config.input_size) or batch < max_batch:
            raise _engine_error(f"--engine tensorrt: {self.plan_path} takes batch {batch} of {height}x{width}")
        self.max_batch = batch

    def close(self) -> None:
        """Release the execution context, the engine and the bound buffers (idempotent)."""
        self._context = None
        self._engine = None
        self.buffers = {}

    @torch.inference_mode()
    def infer(self, images: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """See Engine.infer: images float32 [B, 3, H, W] normalised and padded, on self.device."""
        count = images.shape[0]
        sizes = padded_image_sizes(image_sizes, self.max_batch, self.config.input_size)
        self.buffers["images"][:count].copy_(images, non_blocking=True)
        self.buffers["images"][count:].zero_()
        self.buffers["image_sizes"].copy_(sizes, non_blocking=True)
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see its log)")
        counts = self.buffers["num_detections"][:count].tolist()  # the one host read
        b = self.buffers
        return split_detections(counts, b["boxes"], b["scores"], b["classes"], b["masks"])


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64,
             trt.int8: torch.int8, trt.bool: torch.bool}
    if dtype not in table:
        raise _engine_error(f"--engine tensorrt: unsupported tensor type {dtype}")
    return table[dtype]
