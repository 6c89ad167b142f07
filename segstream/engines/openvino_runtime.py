"""The torch-free engine: an OpenVINO artifact directory run with OpenVINO, numpy and segstream's C kernels.

Per batch (the artifact's layout: segstream/engines/openvino_artifact.py):

    trunk (OpenVINO)        images -> FPN maps, channels-last                     first half (`extract`)
    rpn head (OpenVINO)     FPN maps -> objectness, box deltas per level          second half (`detect`)
    proposals (numpy + C)   per-level top-k, decode against the anchors, clip, small boxes and low
                            scores dropped, BatchedNMS over levels (C kernel)
    box head (OpenVINO)     MultilevelRoIAlign (C kernel) of the proposals -> logits, regression
                            (dynamic rows: only the rows some image of the batch uses)
    detections (numpy + C)  per-class decode, clip, softmax, background dropped, BatchedNMS per class
    mask head (OpenVINO)    MultilevelRoIAlign of the detections -> mask logits; sigmoid of each
                            detection's class channel

Every step follows StaticMaskRCNN (segstream/engines/static_graph.py), which follows torchvision
(docs/kernels.md): the same candidate sets in the same order, the same kernels for NMS and RoIAlign,
float32 throughout; only exp/softmax/sigmoid round in numpy instead of torch (an ulp at most).

Inputs and outputs are numpy: images float32 [B,3,H,W]; Detections of numpy arrays (boxes float32
[K,4], scores float32 [K], classes int64 [K], masks float32 [K,28,28]). Nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from segstream.engines.openvino_artifact import ANCHORS, INSTALL_HINT, Artifact, ArtifactError, load_artifact
from segstream.engines.protocol import Detections, EngineError, Features
from segstream.kernels import host_ops

PRECISIONS = ("fp32", "bf16", "int8")
#: Score given to rows torchvision filters out: below every NMS score threshold (static_graph._DROPPED).
_DROPPED = np.float32(-1.0)
_RPN_SCORE_FLOOR = -0.5


class HostDevice(str):
    """The engine's device: the string "cpu" (what torch-based stages accept) that also answers `.type`."""

    @property
    def type(self) -> str:
        return str(self)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode_boxes(codes: np.ndarray, boxes: np.ndarray, weights: tuple[float, ...], clip: float) -> np.ndarray:
    """torchvision BoxCoder.decode_single in float32: codes [N, 4*C] against boxes [N, 4] -> [N, C, 4]."""
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + np.float32(0.5) * widths
    ctr_y = boxes[:, 1] + np.float32(0.5) * heights
    dx = codes[:, 0::4] / wx
    dy = codes[:, 1::4] / wy
    dw = np.minimum(codes[:, 2::4] / ww, np.float32(clip))
    dh = np.minimum(codes[:, 3::4] / wh, np.float32(clip))
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = np.exp(dw) * widths[:, None]
    pred_h = np.exp(dh) * heights[:, None]
    half_w = np.float32(0.5) * pred_w
    half_h = np.float32(0.5) * pred_h
    return np.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), axis=-1)


def clip_boxes(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """boxes float32 [B, N, 4] clamped into [0, width] x [0, height] of each image (sizes [B, 2] = h, w), in place."""
    height = sizes[:, 0, None].astype(np.float32)
    width = sizes[:, 1, None].astype(np.float32)
    np.clip(boxes[..., 0], 0, width, out=boxes[..., 0])
    np.clip(boxes[..., 1], 0, height, out=boxes[..., 1])
    np.clip(boxes[..., 2], 0, width, out=boxes[..., 2])
    np.clip(boxes[..., 3], 0, height, out=boxes[..., 3])
    return boxes


def _large_enough(boxes: np.ndarray, min_size: float) -> np.ndarray:
    size = np.float32(min_size)
    return ((boxes[..., 2] - boxes[..., 0]) >= size) & ((boxes[..., 3] - boxes[..., 1]) >= size)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices [B, k] of the k largest scores per row, descending (equal scores: lower index first)."""
    n = scores.shape[1]
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    picked = np.take_along_axis(part, order, 1)
    return picked


class OpenVinoRuntimeEngine:
    """Engine/SplitEngine protocol over an artifact directory, without torch (CPU only; `host_arrays`:
    numpy batches in, Detections of numpy arrays out).

    folder: an artifact directory (segstream export openvino), or an Artifact already loaded.
    max_batch: the largest batch `infer` takes (default: the artifact's). The trunk and RPN head run
        at the batch they were exported at, so a batch is run in chunks of it, the last one zero-padded.
    precision: fp32 | bf16 (compile-time hint on fp32 weights) | int8 (needs an int8 artifact);
        default: the artifact's own.
    threads: OpenVINO inference threads of each part (default: half the cores the process may use).
    score_threshold: replaces the artifact's detection score threshold (`model.score_threshold`).
    """

    def __init__(self, folder: str | Path | Artifact, max_batch: int | None = None, precision: str | None = None,
                 threads: int | None = None, source: str | None = None, score_threshold: float | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise EngineError(f"--engine openvino: OpenVINO is not installed: {INSTALL_HINT}") from None
        try:
            artifact = folder if isinstance(folder, Artifact) else load_artifact(folder)
        except ArtifactError as exc:
            raise EngineError(str(exc)) from None
        side = artifact.sidecar
        self.artifact = artifact
        self.host_arrays = True
        self.config = artifact.config
        self._score_threshold = side.roi.score_threshold
        if score_threshold is not None:
            if not 0.0 <= score_threshold <= 1.0:
                raise EngineError(f"score threshold {score_threshold} is not within [0, 1]")
            self.config = self.config.replace(score_threshold=score_threshold)
            self._score_threshold = float(score_threshold)
        self.device = HostDevice("cpu")
        self.source = source or str(artifact.folder)
        precision = precision or side.precision
        if precision not in PRECISIONS:
            raise EngineError(f"--precision {precision}: the openvino runtime offers {', '.join(PRECISIONS)}")
        if (precision == "int8") != (side.weights == "int8"):
            have = "int8" if side.weights == "int8" else "fp32 (fp32 or bf16)"
            raise EngineError(f"--precision {precision}: the artifact {artifact.folder} holds {have} weights; "
                              f"export one with `segstream export openvino --precision {precision}`")
        if max_batch is not None and max_batch < 1:
            raise EngineError(f"--batch-size: {max_batch} must be >= 1")
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise EngineError("--precision bf16: this CPU has no bfloat16 arithmetic (use fp32 or int8)")
        self.max_batch = max_batch or side.batch
        self._chunk = side.batch  # the trunk's and RPN head's fixed batch
        self.precision = precision
        self.threads = threads or max(1, usable_cores() // 2)
        self.name = f"openvino-runtime {precision}"
        properties: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # Pinned threads would leave the decoder and postprocess threads no core to run on.
            "ENABLE_CPU_PINNING": False,
        }
        cache = _compiled_cache(artifact, precision)
        if cache is not None:
            properties["CACHE_DIR"] = str(cache)
        try:
            self._trunk, self._rpn_head, self._box_head, self._mask_head = (
                core.compile_model(str(artifact.part(part)), "CPU", properties).create_infer_request()
                for part in ("trunk", "rpn_head", "box_head", "mask_head")
            )
        except RuntimeError as exc:
            raise EngineError(f"model artifact {artifact.folder}: OpenVINO cannot compile it "
                              f"({str(exc).strip().splitlines()[0][:200]})") from None
        anchors = np.load(artifact.folder / ANCHORS, allow_pickle=False).astype(np.float32, copy=False)
        rpn = side.rpn
        if anchors.shape != (sum(rpn.anchors_per_level), 4):
            raise EngineError(f"model artifact {artifact.folder}: {ANCHORS} holds {anchors.shape}, "
                              f"not [{sum(rpn.anchors_per_level)}, 4]")
        self._anchors = np.split(anchors, np.cumsum(rpn.anchors_per_level)[:-1])
        self._levels = len(rpn.anchors_per_level)
        self._proposal_levels = np.concatenate(
            [np.full((k,), i, np.int32) for i, k in enumerate(rpn.pre_nms_top_n)])
        classes = self.config.num_classes
        rows = rpn.post_nms_top_n
        self._candidate_labels = np.tile(np.arange(1, classes, dtype=np.int32), rows)
        self._candidate_rows = np.repeat(np.arange(rows, dtype=np.int32), classes - 1)

    def close(self) -> None:
        """Drop the infer requests (and with them the compiled models' threads and memory)."""
        self._trunk = self._rpn_head = self._box_head = self._mask_head = None

    def infer(self, images: Any, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """See Engine.infer: images float32 [B, 3, H, W] normalised and padded (numpy, or anything
        numpy reads without a copy, e.g. a CPU tensor)."""
        return self.detect(self.extract(images, image_sizes))

    def extract(self, images: Any, image_sizes: list[tuple[int, int]]) -> Features:
        """The trunk on a batch: FPN maps float32 [B', H/s, W/s, C] per level (B' = the batch rounded up
        to the exported batch), copied out of the request's buffers so the next call may run while
        `detect` still reads them."""
        feed = np.ascontiguousarray(np.asarray(images), dtype=np.float32)
        count = feed.shape[0]
        height, width = self.config.input_size
        if feed.ndim != 4 or feed.shape[1:] != (3, height, width):
            raise ValueError(f"images must be float32 [B, 3, {height}, {width}], got {list(feed.shape)}")
        if count > self.max_batch:
            raise ValueError(f"batch of {count} exceeds max_batch {self.max_batch}")
        if len(image_sizes) != count:
            raise ValueError(f"{count} images but {len(image_sizes)} image sizes")
        rows = -(-max(count, 1) // self._chunk) * self._chunk
        if count < rows:
            padded = np.zeros((rows, *feed.shape[1:]), dtype=np.float32)
            padded[:count] = feed
            feed = padded
        sizes = np.array([list(s) for s in image_sizes] + [[height, width]] * (rows - count), np.int32)
        chunks = []
        for start in range(0, rows, self._chunk):
            outputs = self._trunk.infer([feed[start : start + self._chunk]], share_inputs=True, share_outputs=False)
            chunks.append([outputs[i] for i in range(self._levels)])
        maps = chunks[0] if len(chunks) == 1 else [np.concatenate(level) for level in zip(*chunks)]
        return Features(count, list(image_sizes), {"sizes": sizes, "maps": maps})

    def detect(self, features: Features) -> list[Detections]:
        """RPN head, proposals, box head, detections and mask head on `extract`'s maps."""
        sizes, maps = features.tensors["sizes"], features.tensors["maps"]
        levels = self._levels
        if sizes.shape[0] == self._chunk:
            # One chunk: the request's own buffers, read before its next call (this thread's only).
            outputs = self._rpn_head.infer(maps, share_inputs=True, share_outputs=True)
            objectness = [outputs[i] for i in range(levels)]
            deltas = [outputs[levels + i] for i in range(levels)]
        else:
            objectness, deltas = [], []
            for start in range(0, sizes.shape[0], self._chunk):
                part = [np.ascontiguousarray(m[start : start + self._chunk]) for m in maps]
                outputs = self._rpn_head.infer(part, share_inputs=True, share_outputs=False)
                objectness.append([outputs[i] for i in range(levels)])
                deltas.append([outputs[levels + i] for i in range(levels)])
            objectness = [np.concatenate(level) for level in zip(*objectness)]
            deltas = [np.concatenate(level) for level in zip(*deltas)]
        num_proposals, proposals = self.select_proposals(objectness, deltas, sizes)
        num, boxes, scores, classes = self.select_detections(maps, proposals, num_proposals, sizes)
        masks = self.masks(maps, boxes, num, classes)
        return [
            Detections(boxes[b, :n].copy(), scores[b, :n].copy(), classes[b, :n].astype(np.int64), masks[b, :n].copy())
            for b, n in enumerate(num[: features.count].tolist())
        ]

    def select_proposals(self, objectness: list[np.ndarray], deltas: list[np.ndarray],
                         sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """objectness [B,A,h,w], deltas [B,4A,h,w] per level -> (count int32 [B], proposals float32 [B,R,4])."""
        rpn = self.artifact.sidecar.rpn
        batch = objectness[0].shape[0]
        top_scores, top_deltas, top_anchors = [], [], []
        for level, (logits, regression) in enumerate(zip(objectness, deltas)):
            # torchvision's permute_and_flatten: anchor index = (y * W + x) * A + a.
            _, a, h, w = logits.shape
            logits = logits.transpose(0, 2, 3, 1).reshape(batch, h * w * a)
            regression = regression.reshape(batch, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(batch, h * w * a, 4)
            index = _top_k(logits, rpn.pre_nms_top_n[level])
            top_scores.append(np.take_along_axis(logits, index, 1))
            top_deltas.append(np.take_along_axis(regression, index[..., None], 1))
            top_anchors.append(self._anchors[level][index])
        logits = np.concatenate(top_scores, 1)
        codes = np.concatenate(top_deltas, 1).reshape(-1, 4)
        anchors = np.concatenate(top_anchors, 1).reshape(-1, 4)
        count = logits.shape[1]
        boxes = decode_boxes(codes, anchors, rpn.box_coder_weights, rpn.bbox_xform_clip).reshape(batch, count, 4)
        boxes = clip_boxes(np.ascontiguousarray(boxes), sizes)
        scores = _sigmoid(logits)
        keep = _large_enough(boxes, rpn.min_size) & (scores >= np.float32(rpn.score_threshold))
        scores = np.where(keep, scores, _DROPPED)
        levels = np.broadcast_to(self._proposal_levels, (batch, count))
        result = host_ops.batched_nms(boxes, scores, levels, rpn.nms_threshold, _RPN_SCORE_FLOOR, rpn.post_nms_top_n)
        return result.count, result.boxes

    def _pool(self, spec, maps: list[np.ndarray], boxes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return host_ops.multilevel_roi_align_nhwc(
            [maps[i] for i in spec.levels], boxes, spec.output_size, spec.scales, spec.sampling_ratio, False,
            spec.canonical_scale, spec.canonical_level, counts=counts,
        )

    def select_detections(self, maps: list[np.ndarray], proposals: np.ndarray, num_proposals: np.ndarray,
                          sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Box head on proposals [B,R,4] -> (num int32 [B], boxes f32 [B,K,4], scores f32 [B,K], classes int64 [B,K])."""
        roi = self.artifact.sidecar.roi
        batch, rows = proposals.shape[:2]
        classes = self.config.num_classes
        used = int(num_proposals.max()) if batch else 0
        logits = np.zeros((batch, rows, classes), np.float32)
        regression = np.zeros((batch, rows, 4 * classes), np.float32)
        if used:
            # Rows past every image's count are scored out below: the box head skips them.
            pooled = self._pool(roi.box_pool, maps, proposals[:, :used], num_proposals)
            out = self._box_head.infer([pooled.reshape(batch * used, *pooled.shape[2:])], share_inputs=True,
                                       share_outputs=True)
            logits[:, :used] = out[0].reshape(batch, used, classes)
            regression[:, :used] = out[1].reshape(batch, used, 4 * classes)
        boxes = decode_boxes(regression.reshape(batch * rows, 4 * classes), proposals.reshape(-1, 4),
                             roi.box_coder_weights, roi.bbox_xform_clip)
        boxes = clip_boxes(np.ascontiguousarray(boxes.reshape(batch, rows * classes, 4)), sizes)
        boxes = boxes.reshape(batch, rows, classes, 4)
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        scores = shifted / shifted.sum(-1, keepdims=True)
        # Background dropped; candidate order is torchvision's: proposal-major, class-minor.
        boxes = np.ascontiguousarray(boxes[:, :, 1:]).reshape(batch, rows * (classes - 1), 4)
        scores = np.ascontiguousarray(scores[:, :, 1:]).reshape(batch, rows * (classes - 1))
        keep = (self._candidate_rows[None] < num_proposals[:, None]) & _large_enough(boxes, 1e-2)
        scores = np.where(keep, scores, _DROPPED)
        labels = np.broadcast_to(self._candidate_labels, scores.shape)
        result = host_ops.batched_nms(boxes, scores, labels, roi.nms_threshold, self._score_threshold,
                                      roi.detections_per_image)
        return result.count, result.boxes, result.scores, result.classes

    def masks(self, maps: list[np.ndarray], boxes: np.ndarray, num: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Mask probabilities float32 [B,K,M,M] of the detections (zero past num): the mask head runs
        on the first max(num) rows of each image only."""
        spec = self.artifact.sidecar.roi.mask_pool
        batch, k = boxes.shape[:2]
        size = 2 * spec.output_size
        out = np.zeros((batch, k, size, size), np.float32)
        rows = int(num.max()) if batch else 0
        if not rows:
            return out
        pooled = self._pool(spec, maps, boxes[:, :rows], num)
        result = self._mask_head.infer([pooled.reshape(batch * rows, *pooled.shape[2:])], share_inputs=True,
                                       share_outputs=True)
        logits = result[0].reshape(batch, rows, -1, size, size)
        picked = np.take_along_axis(logits, classes[:, :rows, None, None, None].astype(np.int64), 2)[:, :, 0]
        valid = np.arange(rows)[None] < num[:, None]
        out[:, :rows] = np.where(valid[:, :, None, None], _sigmoid(picked), np.float32(0))
        return out


def _compiled_cache(artifact: Artifact, precision: str) -> Path | None:
    """Where OpenVINO keeps its compiled blobs of this artifact: under $SEGSTREAM_CACHE (else
    $XDG_CACHE_HOME/segstream, else ~/.cache/segstream), keyed by the parts' digests; None when no
    cache directory can be made (a read-only home: compile every start instead)."""
    root = os.environ.get("SEGSTREAM_CACHE") or (
        Path(os.environ["XDG_CACHE_HOME"]) / "segstream" if os.environ.get("XDG_CACHE_HOME") else
        Path.home() / ".cache" / "segstream")
    key = "-".join(artifact.sidecar.parts[p][:8] for p in ("trunk", "rpn_head", "box_head", "mask_head"))
    folder = Path(root) / "openvino-runtime" / f"{key}-{precision}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder
