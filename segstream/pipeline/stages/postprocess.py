"""Postprocess stage: FrameDetections -> FrameResult with full-resolution masks as COCO RLE.

Masks are pasted the way torchvision's `paste_masks_in_image` does (the 28x28 probabilities,
padded by one cell, resized bilinearly onto the integer box grown by the same margin), but only
the box region is computed and thresholded: the frame-sized mask is never materialised, and the
RLE is computed from the region (see rle.py). On the host this is numpy (pipeline/stages/bilinear.py:
two gathers and two weighted sums per axis, over the clipped box only) and the C RLE encoder, so
detections in numpy arrays (a torch-free engine) are finished without importing torch.

When the engine leaves its detections on a GPU, the stage takes every frame waiting (up to
`take`), and one kernel pastes, thresholds and run-length encodes all their instances on the
device (segstream.kernels.mask_rle); boxes, scores, classes and RLE counts come back in one copy
per batch into a reused pinned buffer, and only the compression of the counts into COCO's string
runs on the host. On a GPU the stage works on its own CUDA stream, after the inference stage's
event (pipeline/stages/device_streams.py), so its one wait per batch waits for nothing else. Where
something needs the mask regions (drawing, the tracker's mask IoU), they are rebuilt from those
counts on the host (`region_from_counts`, the cost of the region), not pasted again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from segstream.engines.protocol import Detections
from segstream.pipeline.stages.bilinear import paste_mask
from segstream.pipeline.stages.device_streams import on_stream, stage_stream, take_over
from segstream.pipeline.stages.faults import ConsecutiveFailures
from segstream.pipeline.messages import FrameDetections, FrameResult, Instance
from segstream.pipeline.wire.rle import encode_region, region_from_counts

if TYPE_CHECKING:  # the device path's types; detections in numpy arrays never import torch
    import torch

#: Columns before the counts in the packed per-instance row copied back from the device:
#: num counts, region x0 y0 x1 y1, box x1 y1 x2 y2 (float32 bits), score (float32 bits), class.
_HEADER = 11


def host_array(values: Any) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (copied to the host when on a device)."""
    if isinstance(values, np.ndarray):
        return values
    return values.detach().cpu().numpy()  # a torch tensor: torch is loaded already


def frame_boxes(boxes: Any, scale: tuple[float, float], height: int, width: int) -> Any:
    """float32 [K, 4] network-input boxes -> frame pixels, clipped to the frame (numpy in, numpy
    out; a torch tensor in, a torch tensor out: the device path)."""
    sy, sx = scale
    if not isinstance(boxes, np.ndarray):
        out = boxes / boxes.new_tensor([sx, sy, sx, sy])
        out[:, 0::2] = out[:, 0::2].clamp(0, width)
        out[:, 1::2] = out[:, 1::2].clamp(0, height)
        return out
    out = boxes.astype(np.float32) / np.array([sx, sy, sx, sy], dtype=np.float32)
    np.clip(out[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, height, out=out[:, 1::2])
    return out


def paste_regions(
    masks: Any, boxes: Any, height: int, width: int, threshold: float
) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Threshold each mask pasted into its box, computing only the box region.

    masks: float32 [K, M, M] probabilities; boxes: float32 [K, 4] in frame pixels (numpy arrays,
    or torch tensors, which are copied to the host).
    Returns K pairs (region bool [y1 - y0, x1 - x0], (x0, y0, x1, y1)) in frame pixels, end exclusive.

    Semantics of torchvision's `paste_masks_in_image`: the mask padded by one cell is resized
    bilinearly onto the integer box grown by the same margin (float32 arithmetic, truncated to
    integers as torch's `.to(int64)`); the resampling is pipeline/stages/bilinear.py's, in numpy.
    """
    masks, boxes = host_array(masks), host_array(boxes)
    if masks.shape[0] == 0:
        return []
    m = masks.shape[-1]
    padded = np.pad(masks.astype(np.float32, copy=False), ((0, 0), (1, 1), (1, 1)))
    boxes = boxes.astype(np.float32, copy=False)
    grow = (m + 2) / m  # a Python float: float32 arithmetic below, as torch's tensor * scalar
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * grow
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * grow
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    grown = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(np.int64).tolist()
    out = []
    for i, (bx0, by0, bx1, by1) in enumerate(grown):
        x0, x1 = max(bx0, 0), min(max(bx1, bx0) + 1, width)
        y0, y1 = max(by0, 0), min(max(by1, by0) + 1, height)
        if x1 <= x0 or y1 <= y0:
            out.append((np.zeros((0, 0), dtype=bool), (0, 0, 0, 0)))
            continue
        out.append((paste_mask(padded[i], (bx0, by0, bx1, by1), (x0, y0, x1, y1), threshold), (x0, y0, x1, y1)))
    return out


def _on_cuda(values: Any) -> bool:
    """True for a torch tensor on a GPU (a numpy array has no `is_cuda`)."""
    return bool(getattr(values, "is_cuda", False))


class Postprocess:
    """FrameDetections -> FrameResult. take: frames handled together (the device path encodes them
    in one launch and one copy). regions: keep each mask's box region (drawing and the tracker
    need it; the device path rebuilds it from the counts). device_path: None uses the kernel path
    for detections on a GPU; True also for CPU detections (the kernels' C++ build: how the path
    is tested without a GPU)."""

    name = "postprocess"

    def __init__(self, class_names: tuple[str, ...], mask_threshold: float, max_consecutive_errors: int = 5,
                 take: int = 1, regions: bool = True, device_path: bool | None = None) -> None:
        self.class_names = class_names
        self.mask_threshold = mask_threshold
        self.failures = ConsecutiveFailures("postprocess", max_consecutive_errors)
        self.take = take
        self.regions = regions
        self.device_path = device_path
        self._pinned: "torch.Tensor | None" = None  # reused host buffer of the device path
        self.stream: "torch.cuda.Stream | None" = None  # made for the first detections on a GPU

    def process(self, items: list[Any]) -> Iterable[Any]:
        on_gpu = [item for item in items if isinstance(item, FrameDetections) and item.detections is not None
                  and _on_cuda(item.detections.masks)]
        if on_gpu and self.stream is None:
            self.stream = stage_stream(on_gpu[0].detections.masks.device)
        with on_stream(self.stream if on_gpu else None):
            take_over(self.stream if on_gpu else None, [item.ready for item in on_gpu],
                      [t for item in on_gpu for t in (item.detections.boxes, item.detections.scores,
                                                       item.detections.classes, item.detections.masks)])
            return self._process(items)

    def _process(self, items: list[Any]) -> list[Any]:
        on_device = [i for i, item in enumerate(items) if self._device_path(item)]
        encoded: dict[int, list[Instance] | Exception | str] = {}
        if on_device:
            try:
                for index, found in zip(on_device, self.device_instances([items[i] for i in on_device])):
                    encoded[index] = found
            except Exception as exc:  # the whole batch failed on the device: one failure, each frame reports it
                failed = self.failures.record(exc)
                encoded = {i: failed for i in on_device}
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, FrameDetections):
                out.append(item)
            elif i in encoded:
                out.append(self._finish(item, encoded[i]))
            else:
                out.append(self.result(item))
        return out

    def _device_path(self, item: Any) -> bool:
        if self.device_path is False or not isinstance(item, FrameDetections) or item.detections is None:
            return False
        return self.device_path is True or _on_cuda(item.detections.masks)

    def _finish(self, item: FrameDetections, found: list[Instance] | Exception | str) -> FrameResult:
        frame = item.frame
        if isinstance(found, str):  # its batch failed, counted once already
            return FrameResult(frame=frame, latency=time.time() - frame.time, error=found)
        if isinstance(found, Exception):
            return FrameResult(frame=frame, latency=time.time() - frame.time, error=self.failures.record(found))
        self.failures.succeeded()
        return FrameResult(frame=frame, instances=found, latency=time.time() - frame.time)

    def device_instances(self, items: list[FrameDetections]) -> list[list[Instance]]:
        """Instances of frames whose detections are on a GPU: one kernel launch, one copy back.

        Same instances as `instances` (same paste, same threshold, byte-identical RLE); `region`
        and `region_box` only when `regions` is set (rebuilt from the counts) or for a row whose
        counts did not fit (pasted on the CPU).
        """
        import torch

        from segstream.kernels.mask_rle import compress_counts, default_cap, mask_rle_counts

        as_tensors = [found if not isinstance(found.masks, np.ndarray) else found.to("cpu")
                      for found in (item.detections for item in items)]
        device = as_tensors[0].masks.device
        boxes, masks, scores, classes, sizes, per_frame = [], [], [], [], [], []
        for item, found in zip(items, as_tensors):
            frame = item.frame
            boxes.append(frame_boxes(found.boxes.float(), item.scale, frame.height, frame.width))
            masks.append(found.masks.float())
            scores.append(found.scores.float())
            classes.append(found.classes.to(torch.int32))
            sizes.extend([(frame.height, frame.width)] * len(found))
            per_frame.append(len(found))
        total = sum(per_frame)
        if total == 0:
            return [[] for _ in items]
        boxes_t, masks_t = torch.cat(boxes), torch.cat(masks)
        cap = default_cap(max(width for _, width in sizes))
        frame_sizes = torch.tensor(sizes, dtype=torch.int32).to(device, non_blocking=True)
        rle = mask_rle_counts(masks_t, boxes_t, frame_sizes, self.mask_threshold, cap)
        packed = torch.cat([
            rle.num[:, None], rle.regions, boxes_t.view(torch.int32), torch.cat(scores).view(torch.int32)[:, None],
            torch.cat(classes)[:, None], rle.counts,
        ], dim=1)
        host = self._host_buffer(packed.shape)
        host.copy_(packed, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the one wait of the batch
        rows = host.numpy()
        out: list[list[Instance]] = []
        start = 0
        for item, count in zip(items, per_frame):
            frame = item.frame
            instances = []
            for r in range(start, start + count):
                row = rows[r]
                n, region_box = int(row[0]), tuple(int(v) for v in row[1:5])
                box = tuple(float(v) for v in row[5:9].view(np.float32))
                score, class_id = float(row[9:10].view(np.float32)[0]), int(row[10])
                region = None
                if n <= cap:
                    counts = row[_HEADER:_HEADER + n]
                    rle_dict = {"size": [frame.height, frame.width], "counts": compress_counts(counts)}
                    if self.regions:
                        region = region_from_counts(counts, region_box, frame.height)
                else:  # a mask too ragged for its row: the CPU path for this one instance
                    ((region, region_box),) = paste_regions(masks_t[r:r + 1], boxes_t[r:r + 1], frame.height,
                                                            frame.width, self.mask_threshold)
                    rle_dict = encode_region(region, region_box[0], region_box[1], frame.height, frame.width)
                label = self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)
                instances.append(Instance(class_id=class_id, label=label, score=score, box=box, rle=rle_dict,
                                          region=region, region_box=region_box if region is not None else None))
            out.append(instances)
            start += count
        return out

    def _host_buffer(self, shape: "torch.Size") -> "torch.Tensor":
        """A pinned int32 host tensor of `shape`, a view of one buffer grown as needed."""
        import torch

        size = int(np.prod(shape))
        if self._pinned is None or self._pinned.numel() < size:
            self._pinned = torch.empty(max(size, 1 << 16), dtype=torch.int32, pin_memory=torch.cuda.is_available())
        return self._pinned[:size].view(shape)

    def flush(self) -> Iterable[Any]:
        return ()

    def result(self, item: FrameDetections) -> FrameResult:
        frame, found = item.frame, item.detections
        if found is None:  # the engine failed on this frame's batch
            return FrameResult(frame=frame, latency=time.time() - frame.time, error=item.error)
        try:
            instances = self.instances(found, item.scale, frame.height, frame.width)
        except Exception as exc:  # one bad frame is published without instances
            return FrameResult(frame=frame, latency=time.time() - frame.time, error=self.failures.record(exc))
        self.failures.succeeded()
        return FrameResult(frame=frame, instances=instances, latency=time.time() - frame.time)

    def instances(self, found: Detections, scale: tuple[float, float], height: int, width: int) -> list[Instance]:
        """Instances in frame pixels, in the engine's (descending score) order."""
        if len(found) == 0:
            return []
        boxes = frame_boxes(host_array(found.boxes).astype(np.float32, copy=False), scale, height, width)
        regions = paste_regions(host_array(found.masks), boxes, height, width, self.mask_threshold)
        out = []
        for box, score, class_id, (region, (x0, y0, x1, y1)) in zip(
            boxes.tolist(), host_array(found.scores).tolist(), host_array(found.classes).tolist(), regions
        ):
            label = self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)
            out.append(
                Instance(
                    class_id=int(class_id),
                    label=label,
                    score=float(score),
                    box=tuple(box),
                    rle=encode_region(region, x0, y0, height, width),
                    region=region,
                    region_box=(x0, y0, x1, y1),
                )
            )
        return out
