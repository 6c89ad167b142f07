"""The openvino backend: the model's dense parts compiled by OpenVINO on the CPU, the rest in torch.

This is the path for a torch model (a checkpoint or preset, with the torch extra). Artifact
directories (`segstream export openvino`) and the bundled shapes model run on the torch-free engine
instead (segstream/engines/openvino_runtime.py, chosen by factory.open_model_engine).

Per batch:

    trunk (OpenVINO)      images -> FPN maps (backbone + FPN)            most of the time of a frame
    rpn head (OpenVINO)   FPN maps -> objectness, box deltas per level
    proposals (torch)     top-k, decode, clip, BatchedNMS               the static graph's own code
    box head (torch)      MultilevelRoIAlign, box head, decode, NMS     small (R = 100 rows of 7x7)
    mask head (OpenVINO)  on the frame's detections only (dynamic rows)
    masks (torch)         sigmoid of each detection's class channel

The trunk is the engine's first half (`extract`), the rest its second (`detect`): the pipeline runs
them on two threads, one batch apart (SplitEngine), so the trunk of frame n+1 runs on one core
while the heads of frame n run on the other.

The torch steps are StaticMaskRCNN's (segstream/engines/static_graph.py) on segstream's CPU kernels,
which give torchvision's detections; the OpenVINO parts are converted from the same modules
(segstream/engines/openvino_build.py, cached on disk). The RPN head sits in the second half, not in
the trunk, to even out the halves (about a quarter of the trunk's work). Why this split: measured on the bundled
model, the trunk, RPN head and mask head are where OpenVINO beats eager torch (2-3x at fp32, more with
bf16); the box head is as fast in torch, and the data-dependent steps are cheap; see docs/engines.md.

Precisions: fp32; bf16 (OpenVINO's inference precision hint: bf16 arithmetic where the CPU has it);
int8 (NNCF post-training quantization of the three parts). One caller at a time per half: each half
owns its OpenVINO infer requests (the trunk's; the RPN head's and the mask head's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from segstream.engines.calibration import CalibrationError, network_inputs, read_frames
from segstream.engines.models import LoadedModel
from segstream.engines.openvino_build import (
    PARTS,
    PRECISIONS,
    OpenVinoUnavailable,
    cached_parts,
    require_openvino,
)
from segstream.engines.protocol import Detections, Features
from segstream.engines.static_graph import StaticMaskRCNN, padded_image_sizes, split_detections


def _engine_error(message: str) -> Exception:
    from segstream.engines.factory import EngineError

    return EngineError(message)


def default_threads() -> int:
    """OpenVINO inference threads when none are configured: half the cores this process may use.

    The pipeline runs the trunk (`extract`) and the rest (`detect`) on two threads one batch apart,
    each with these many OpenVINO threads; the decoder, preprocess and postprocess threads share
    the same cores. On 2 cores, 1 thread gave the faster pipeline and engine (docs/engines.md).
    """
    from segstream.engines.factory import usable_cores

    return max(1, usable_cores() // 2)


#: torch's intra-op threads while an OpenVINO engine is in the process (set once, when it is built).
TORCH_THREADS = 1


def _settle_torch_threads() -> None:
    """torch's intra-op threads set to TORCH_THREADS, once, when the engine is built.

    The torch steps between the OpenVINO parts are many small operations: split over two OpenMP
    threads they gained nothing, and the OpenMP threads spinning after each one took the cores
    OpenVINO's own threads were about to run on (measured: docs/engines.md). The count is
    process-wide state that postprocess (another thread) reads too, so it is set here, before any
    batch, and never changed per batch: changing it around each batch raced with postprocess and
    left other threads at whatever count the last batch had set. A configured `engine.threads`
    is applied after the engine is built (pipeline/streaming.py) and wins.
    """
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


def _calibration_inputs(model: LoadedModel, calibration: str | Path | Sequence[torch.Tensor] | None) -> list[torch.Tensor] | None:
    """Network inputs f32 [1,3,H,W] of what the caller passed: a path is read, inputs are taken as they are."""
    if calibration is None:
        return None
    if isinstance(calibration, (str, Path)):
        return network_inputs(model.config, read_frames(calibration))
    return list(calibration)


class OpenVinoEngine:
    """Engine protocol over OpenVINO-compiled trunk and mask head, torch in between (CPU only).

    model: the loaded model; its modules are converted (or the cached conversion reused).
    max_batch: the trunk's fixed batch; smaller batches are zero-padded and sliced.
    precision: fp32 | bf16 | int8 (see the module docstring).
    threads: OpenVINO inference threads of each part (default: half the cores the process may use).
    calibration: int8 only, frames of the model's domain to quantize on: a folder of images or a
        video file (engines/calibration.py), or network inputs f32 [1,3,H,W] already made; an int8
        build without it is one EngineError saying what to pass.
    Building one sets torch's intra-op threads to TORCH_THREADS for the process (once; see
    _settle_torch_threads).
    """

    def __init__(
        self, model: LoadedModel, device: str | torch.device = "cpu", max_batch: int = 1,
        precision: str = "fp32", threads: int | None = None,
        calibration: str | Path | Sequence[torch.Tensor] | None = None,
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
            inputs = _calibration_inputs(model, calibration) if precision == "int8" else None
            self.cache_dir, self.built = cached_parts(model, max_batch, precision, ov, core, inputs)
        except (OpenVinoUnavailable, CalibrationError) as exc:
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
        self._trunk, self._rpn_head, self._mask_head = (
            core.compile_model(str(self.cache_dir / f"{part}.xml"), "CPU", properties).create_infer_request()
            for part in PARTS
        )
        # The torch steps: the static graph's own code on the same modules (nothing is copied).
        self.graph = StaticMaskRCNN(model.network, model.config).eval()
        self._levels = len(self.graph.anchors_per_level)
        _settle_torch_threads()

    def close(self) -> None:
        """Drop the infer requests (and with them the compiled models' threads and memory)."""
        self._trunk = self._rpn_head = self._mask_head = None

    @torch.inference_mode()
    def infer(self, images: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """See Engine.infer: images float32 [B, 3, H, W] normalised and padded, on the CPU."""
        return self.detect(self.extract(images, image_sizes))

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, image_sizes: list[tuple[int, int]]) -> Features:
        """The trunk (OpenVINO) on a batch: the FPN maps, f32 [max_batch, H/s, W/s, C] per level (see SplitEngine).

        The maps are copied out of the request's buffers (~3 MB at 288x480), so the next call can run
        while the detection half still reads them on another thread.
        """
        count = images.shape[0]
        if count > self.max_batch:
            raise ValueError(f"batch of {count} exceeds max_batch {self.max_batch}")
        sizes = padded_image_sizes(image_sizes, self.max_batch, self.config.input_size)
        feed = images.detach().to("cpu", torch.float32).contiguous().numpy()
        if count < self.max_batch:
            padded = np.zeros((self.max_batch, *feed.shape[1:]), dtype=np.float32)
            padded[:count] = feed
            feed = padded
        outputs = self._trunk.infer([feed], share_inputs=True, share_outputs=False)
        maps = [outputs[i] for i in range(self._levels)]
        return Features(count, list(image_sizes), {"sizes": sizes, "maps": maps})

    @torch.inference_mode()
    def detect(self, features: Features) -> list[Detections]:
        """The RPN head (OpenVINO), proposals, box head and NMS (torch, TORCH_THREADS) and the mask head
        (OpenVINO) on `extract`'s maps."""
        t = features.tensors
        graph, sizes, levels = self.graph, t["sizes"], self._levels
        outputs = self._rpn_head.infer(t["maps"], share_inputs=True, share_outputs=True)
        rpn = [torch.from_numpy(outputs[i]) for i in range(2 * levels)]
        # [B, C, h, w] views of the channels-last maps: RoIAlign reads them as they are.
        maps = [torch.from_numpy(m).permute(0, 3, 1, 2) for m in t["maps"]]
        num_proposals, proposals = graph.select_proposals(rpn[:levels], rpn[levels:], sizes)
        num, boxes, scores, classes = graph.detect(maps, proposals, num_proposals, sizes)
        masks = self._masks(maps, boxes, num, classes)
        counts = num[: features.count].tolist()
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
