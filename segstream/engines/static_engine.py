"""The static backend: the fixed-shape graph (the one exported to ONNX) run in torch.

`StaticMaskRCNN` (static_graph.py) runs on the project's own kernels: their C++ build on a CPU,
their NVRTC build on a GPU. Every shape in the graph depends only on the batch and the input
size and nothing reads a value back to the host, so on CUDA one forward pass per batch size is
captured as a CUDA graph (torch.cuda.CUDAGraph) and then replayed: one launch of the whole
network per batch instead of some hundreds of kernel launches from Python.

    batch B (<= max_batch) -> copy into the static input of graph[G] (G = B rounded up to a power
    of two, at most max_batch; padding rows zero) -> replay -> read counts

How the capture follows torch's documented recipe (torch.cuda.graph, "CUDA Graphs" notes):
  - warm-up passes run on a side stream first (cuDNN/cuBLAS pick their algorithms, the kernels'
    module is compiled and loaded, the caching allocator fills), then the capture;
  - inputs and outputs are static tensors: a replay reads the images from `inputs[B]` and writes
    the same output tensors every time, so each call copies its batch in and its results out;
  - one private memory pool per engine, shared by its graphs (they never run concurrently).

Precision: fp32 (everything float32), fp16 or bf16 (the convolutional trunk and heads in that
dtype; anchors, box decoding, top-k, softmax, NMS and the outputs stay float32, as in the fp16
ONNX export). channels_last: the trunk's weights and the input in NHWC, the layout cuDNN's
tensor-core convolutions want; on by default on CUDA, off on the CPU.
"""

from __future__ import annotations

import threading

import torch

from segstream.engines.models import LoadedModel
from segstream.engines.protocol import Detections, EngineError
from segstream.engines.static_graph import StaticMaskRCNN, padded_image_sizes, split_detections

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Forward passes on a side stream before a capture (torch's examples use 3; the first call also
#: compiles and loads the kernels, which must not happen inside a capture).
WARMUP_PASSES = 3


class _Captured:
    """One captured forward pass: static input/size tensors, the graph and its static outputs."""

    def __init__(self, graph: torch.cuda.CUDAGraph, images: torch.Tensor, sizes: torch.Tensor,
                 outputs: tuple[torch.Tensor, ...]) -> None:
        self.graph, self.images, self.sizes, self.outputs = graph, images, sizes, outputs


class StaticEngine:
    """Engine protocol over StaticMaskRCNN in torch; CUDA graphs on a GPU.

    model: the loaded network (shared, its float32 modules are used as they are for fp32).
    device: cpu or cuda. max_batch: the largest batch `infer` takes.
    precision: fp32 | fp16 | bf16 (trunk dtype, see the module docstring).
    cuda_graphs: capture and replay on CUDA (False: run the graph eagerly, e.g. to compare).
    channels_last: NHWC trunk; None means on for CUDA, off for the CPU.
    """

    name = "static"

    def __init__(
        self,
        model: LoadedModel,
        device: str | torch.device = "cpu",
        max_batch: int = 1,
        precision: str = "fp32",
        cuda_graphs: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise EngineError(f"--precision {precision}: the static engine takes {', '.join(PRECISIONS)}")
        self.config = model.config
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.precision = precision
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        network = model.network.to(self.device).eval()
        try:
            self.graph = StaticMaskRCNN(network, model.config, PRECISIONS[precision]).eval()
        except ValueError as exc:
            raise EngineError(f"--engine static: {exc}") from None
        if self.channels_last:
            self.graph.backbone.to(memory_format=torch.channels_last)
        self._captured: dict[int, _Captured] = {}
        self._pool = None
        self._lock = threading.Lock()  # a replay owns the static buffers until its outputs are copied

    # -- running ------------------------------------------------------------------------------
    def _forward(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.graph(images, sizes)

    @torch.inference_mode()
    def infer(self, images: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """See Engine.infer: images float32 [B, 3, H, W] normalised and padded, on self.device."""
        count = images.shape[0]
        if count > self.max_batch:
            raise ValueError(f"batch of {count} exceeds max_batch {self.max_batch}")
        if tuple(images.shape[-2:]) != tuple(self.config.input_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])}, the engine takes {self.config.input_size}")
        if not self.cuda_graphs:
            sizes = padded_image_sizes(image_sizes, count, self.config.input_size)
            num, boxes, scores, classes, masks = self._forward(images, sizes.to(self.device, non_blocking=True))
            return split_detections(num.tolist(), boxes, scores, classes, masks)
        graph_batch = self.graph_batch(count)
        sizes = padded_image_sizes(image_sizes, graph_batch, self.config.input_size)
        with self._lock:
            captured = self._captured.get(graph_batch) or self._capture(graph_batch)
            captured.images[:count].copy_(images, non_blocking=True)
            if count < graph_batch:  # padding rows: any valid image; their detections are dropped
                captured.images[count:].zero_()
            captured.sizes.copy_(sizes, non_blocking=True)
            captured.graph.replay()
            num, boxes, scores, classes, masks = captured.outputs
            counts = num[:count].tolist()  # the one host read; split_detections copies out of the static outputs
            return split_detections(counts, boxes, scores, classes, masks)

    def graph_batch(self, count: int) -> int:
        """The captured batch size a batch of `count` runs in: the next power of two, at most max_batch.

        One graph per power of two instead of one per size: a live pipeline's partial batches take
        every size from 1 to max_batch, and each capture costs a few forward passes.
        """
        size = 1
        while size < count:
            size *= 2
        return min(size, self.max_batch)

    # -- CUDA graphs --------------------------------------------------------------------------
    def _capture(self, batch: int) -> _Captured:
        """Warm up on a side stream, then capture one forward pass at `batch` (torch's recipe)."""
        height, width = self.config.input_size
        images = torch.zeros((batch, 3, height, width), dtype=torch.float32, device=self.device)
        sizes = torch.tensor([[height, width]] * batch, dtype=torch.int32, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                self._forward(images, sizes)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the pipeline's other stages keep working on their own streams and threads
        # (a capture forced mid-run by a new batch size must not fail on their allocations).
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            outputs = self._forward(images, sizes)
        captured = _Captured(graph, images, sizes, tuple(outputs))
        self._captured[batch] = captured
        return captured

    def warm_up(self) -> None:
        """Capture every graph the engine can need now (a capture mid-stream delays those frames)."""
        if self.cuda_graphs:
            with self._lock, torch.inference_mode():
                size = 1
                while True:
                    size = min(size, self.max_batch)
                    if size not in self._captured:
                        self._capture(size)
                    if size == self.max_batch:
                        break
                    size *= 2

    def captured_batches(self) -> list[int]:
        """Batch sizes with a captured graph (for tests and the benchmark)."""
        return sorted(self._captured)

    def close(self) -> None:
        """Drop the captured graphs and their memory pool (the engine can still run: it recaptures)."""
        with self._lock:
            self._captured.clear()
            self._pool = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
