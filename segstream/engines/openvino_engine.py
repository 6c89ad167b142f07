"""The openvino backend: the model's dense parts compiled by OpenVINO on the CPU, the rest in torch.

Per batch:

    trunk (OpenVINO)      images -> FPN maps + RPN head outputs         most of the time of a frame
    proposals (torch)     top-k, decode, clip, BatchedNMS               the static graph's own code
    box head (torch)      MultilevelRoIAlign, box head, decode, NMS     small (R = 100 rows of 7x7)
    mask head (OpenVINO)  on the frame's detections only (dynamic rows)
    masks (torch)         sigmoid of each detection's class channel

The torch steps are StaticMaskRCNN's (segstream/engines/static_graph.py) on segstream's CPU kernels,
which give torchvision's detections; the OpenVINO parts are converted from the same modules
(segstream/engines/openvino_build.py, cached on disk). Why this split: measured on the bundled
model, the trunk and the mask head are where OpenVINO beats eager torch (2-3x at fp32, more with
bf16); the box head is as fast in torch, and the data-dependent steps are cheap; see docs/engines.md.

Precisions: fp32; bf16 (OpenVINO's inference precision hint: bf16 arithmetic where the CPU has it);
int8 (NNCF post-training quantization of both parts). One caller at a time: the outputs of a call
are views of the OpenVINO request's buffers until the detections are copied out at its end.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from segstream.engines.models import LoadedModel
from segstream.engines.openvino_build import (
    PRECISIONS,
    OpenVinoUnavailable,
    cached_parts,
    require_openvino,
)
from segstream.engines.protocol import Detections
from segstream.engines.static_graph import StaticMaskRCNN, padded_image_sizes, split_detections


def _engine_error(message: str) -> Exception:
    from segstream.engines.factory import EngineError

    return EngineError(message)


def default_threads() -> int:
    """OpenVINO inference threads when none are configured: every core this process may use but one.

    The one left is for the pipeline's other threads (decoder, preprocess, postprocess with its mask
    pasting and RLE): on 2 cores, 1 OpenVINO thread gave the faster pipeline and engine (docs/engines.md).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@contextlib.contextmanager
def _torch_threads(count: int):
    """torch's intra-op threads set to `count` for the block, then restored.

    The torch steps between the OpenVINO parts are many small operations: split over two OpenMP
    threads they gained nothing, and the OpenMP threads spinning after each one took the cores
    OpenVINO's own threads were about to run on (measured: docs/engines.md).
    """
    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class OpenVinoEngine:
    """Engine protocol over OpenVINO-compiled trunk and mask head, torch in between (CPU only).

    model: the loaded model; its modules are converted (or the cached conversion reused).
    max_batch: the trunk's fixed batch; smaller batches are zero-padded and sliced.
    precision: fp32 | bf16 | int8 (see the module docstring).
    threads: OpenVINO inference threads (default: every core the process may use but one).
    """

    def __init__(
        self, model: LoadedModel, device: str | torch.device = "cpu", max_batch: int = 1,
        precision: str = "fp32", threads: int | None = None,
    ) -> None:
        try:
            ov = require_openvino()
        except OpenVinoUnavailable as exc:
            raise _engine_error(f"--engine openvino: {exc}") from None
        self.config = model.config
        self.device = torch.device(device)
        if self.device.type != "cpu":
            raise _engine_error("--engine openvino runs on the CPU: use --device cpu (or --engine tensorrt on a GPU)")
        if precision not in PRECISIONS:
            raise _engine_error(f"--engine openvino: precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if max_batch < 1:
            raise _engine_error(f"--batch-size: {max_batch} must be >= 1")
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise _engine_error("--precision bf16: this CPU has no bfloat16 arithmetic (use fp32 or int8)")
        self.max_batch = max_batch
        self.precision = precision
        self.threads = threads or default_threads()
        self.name = f"openvino {precision}"
        try:
            self.cache_dir, self.built = cached_parts(model, max_batch, precision, ov, core)
        except OpenVinoUnavailable as exc:
            raise _engine_error(f"--engine openvino: {exc}") from None
        properties = {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # Pinned threads would leave the decoder and postprocess threads no core to run on.
            "ENABLE_CPU_PINNING": False,
            "CACHE_DIR": str(self.cache_dir / f"compiled-{precision}"),
        }
        self._trunk = core.compile_model(str(self.cache_dir / "trunk.xml"), "CPU", properties).create_infer_request()
        self._mask_head = core.compile_model(str(self.cache_dir / "mask_head.xml"), "CPU", properties).create_infer_request()
        # The torch steps: the static graph's own code on the same modules (nothing is copied).
        self.graph = StaticMaskRCNN(model.network, model.config).eval()
        self._levels = len(self.graph.anchors_per_level)

    def close(self) -> None:
        """Drop the infer requests (and with them the compiled models' threads and memory)."""
        self._trunk = self._mask_head = None

    @torch.inference_mode()
    def infer(self, images: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """See Engine.infer: images float32 [B, 3, H, W] normalised and padded, on the CPU."""
        count = images.shape[0]
        if count > self.max_batch:
            raise ValueError(f"batch of {count} exceeds max_batch {self.max_batch}")
        sizes = padded_image_sizes(image_sizes, self.max_batch, self.config.input_size)
        feed = images.detach().to("cpu", torch.float32).contiguous().numpy()
        if count < self.max_batch:
            padded = np.zeros((self.max_batch, *feed.shape[1:]), dtype=np.float32)
            padded[:count] = feed
            feed = padded
        outputs = self._trunk.infer([feed], share_inputs=True, share_outputs=True)
        tensors = [torch.from_numpy(outputs[i]) for i in range(3 * self._levels)]
        levels = self._levels
        features, objectness, deltas = tensors[:levels], tensors[levels : 2 * levels], tensors[2 * levels :]

        graph = self.graph
        with _torch_threads(1):
            num_proposals, proposals = graph.select_proposals(objectness, deltas, sizes)
            num, boxes, scores, classes = graph.detect(features, proposals, num_proposals, sizes)
            masks = self._masks(features, boxes, num, classes)
            counts = num[:count].tolist()
            return split_detections(counts, boxes, scores, classes, masks)

    def _masks(self, features: list[torch.Tensor], boxes: torch.Tensor, num: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """f32 [B,K,M,M] mask probabilities: the mask head runs on the first max(num) rows of each image only."""
        batch, k = boxes.shape[:2]
        rows = int(num.max()) if batch else 0
        size = 2 * self.graph.mask_pool.output_size
        logits = torch.zeros((batch, k, self.config.num_classes, size, size))
        if rows:
            pooled = self.graph.mask_pool(features, boxes, num)[:, :rows].flatten(0, 1).contiguous()
            result = self._mask_head.infer([pooled.numpy()], share_inputs=True, share_outputs=True)
            logits[:, :rows] = torch.from_numpy(result[0]).reshape(batch, rows, *logits.shape[2:])
        return self.graph.mask_probabilities(logits.flatten(0, 1), num, classes)
