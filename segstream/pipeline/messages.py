"""The typed messages that travel on the queues between stages.

    Source --Frame--> Preprocess --Batch--> Inference --FrameDetections--> Postprocess --FrameResult-->
        Tracking --FrameResult (with track ids)--> Publish

    (a split engine on a CPU: Preprocess --Batch--> Features --BatchFeatures--> Inference ...)

EndOfStream follows the last Frame of a file source down the same queues, so every stage sees
it after all of that stream's frames. StreamStatus (a camera's state changed) travels the same
way, between the frames it separates. Stages pass both on untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segstream.engines.protocol import Detections

if TYPE_CHECKING:  # device images and CUDA events exist only on the GPU path; a CPU run may have no torch
    import torch


@dataclass
class Frame:
    """One decoded video frame.

    image: uint8 [h, w, 3] RGB: the whole frame, in frame pixels, or (when the source decodes
        straight to the engine's input size) the frame scaled down to h x w. A numpy array on the
        host, or a CUDA tensor when the source decoded on the GPU (NVDEC, pipeline/sources/nvdec.py):
        `host_image()` and `sample()` read either.
    index: 0-based index of the decoded frame in its source (gaps mean frames dropped on the way).
    pts: presentation time in seconds, or None when the container has none.
    time: unix seconds when the frame was decoded (capture time for live sources).
    live: True for camera streams, whose frames may be dropped to keep latency bounded.
    """

    stream_id: str
    index: int
    pts: float | None
    time: float
    image: "np.ndarray | torch.Tensor"
    live: bool = False
    source_size: tuple[int, int] | None = None  # (H, W) of the decoded frame when `image` is scaled
    ready: "torch.cuda.Event | None" = None  # a device image: recorded on the decoder's stream after it
    _host: np.ndarray | None = field(default=None, repr=False, compare=False)  # host copy of a device image

    @property
    def height(self) -> int:
        return self.source_size[0] if self.source_size else int(self.image.shape[0])

    @property
    def width(self) -> int:
        return self.source_size[1] if self.source_size else int(self.image.shape[1])

    def host_image(self) -> np.ndarray:
        """`image` as a numpy uint8 [h, w, 3] array (a device image is copied back once, then kept)."""
        if isinstance(self.image, np.ndarray):
            return self.image
        if self._host is None:
            self._host = self.sample(None, None)
        return self._host

    def sample(self, rows: np.ndarray | None, cols: np.ndarray | None) -> np.ndarray:
        """uint8 [len(rows), len(cols), 3]: the pixels at those rows and columns (None: all), on the
        host. Of a device image only those pixels cross to the host."""
        image = self.image
        if isinstance(image, np.ndarray):
            picked = image if rows is None else image[rows]
            return picked if cols is None else picked[:, cols]
        import torch  # a device image: torch is loaded already

        if self.ready is not None:  # the decoder's stream wrote the image
            torch.cuda.current_stream(image.device).wait_event(self.ready)
        if rows is not None:
            image = image[torch.as_tensor(rows, device=image.device)]
        if cols is not None:
            image = image[:, torch.as_tensor(cols, device=image.device)]
        return image.cpu().numpy()

    @property
    def full_frame(self) -> bool:
        """True when `image` holds every pixel of the frame (drawing needs it)."""
        return self.source_size is None


@dataclass
class EndOfStream:
    """A file source ended: `frames` frames were decoded. interrupted: stopped by a signal or error."""

    stream_id: str
    frames: int
    interrupted: bool = False
    error: str | None = None  # why the file ended early (e.g. truncated: how many frames it gave)


@dataclass
class StreamStatus:
    """A live stream changed state (connecting, live, reconnecting, down, ended).

    since: unix seconds of the change; reconnects: re-joins so far; url: password redacted;
    error: why the feed was lost or cannot be opened, when it was.
    """

    stream_id: str
    status: str
    since: float
    reconnects: int
    url: str
    error: str | None = None


@dataclass
class Batch:
    """Frames resized, normalised and padded into one network input.

    images: float32 [B, 3, H, W] on the engine's device, (H, W) = the engine's input size: a numpy
        array for an engine that takes host arrays (`host_arrays`, engines/protocol.py), else a torch tensor.
    image_sizes: per frame (height, width) of its resized area inside the padded input.
    scales: per frame (sy, sx) = resized size / frame size; network-input pixel / scale = frame pixel.
    """

    frames: list[Frame]
    images: "np.ndarray | torch.Tensor"
    image_sizes: list[tuple[int, int]]
    scales: list[tuple[float, float]]
    ready: "torch.cuda.Event | None" = None  # CUDA: recorded on the preprocess stream after `images` is made


@dataclass
class BatchFeatures:
    """A batch after the first half of a split engine (`features` stage -> `inference` stage).

    features: the engine's own intermediate result (segstream.engines.protocol.Features), opaque here.
    """

    batch: Batch
    features: Any


@dataclass
class FrameDetections:
    """One frame with what the engine found in it (network-input coordinates, see Detections)."""

    frame: Frame
    detections: Detections | None
    scale: tuple[float, float]
    error: str | None = None  # the engine failed on this frame's batch: published without instances
    ready: "torch.cuda.Event | None" = None  # CUDA: recorded on the inference stream after `detections`


@dataclass
class Instance:
    """One segmented object in frame pixels.

    box: x1, y1, x2, y2 in frame pixels (floats).
    rle: COCO compressed RLE of the full-frame, column-major mask: {"size": [H, W], "counts": str}.
    region: bool [y1r - y0r, x1r - x0r] the mask inside `region_box`, kept for drawing.
    region_box: (x0, y0, x1, y1) integer frame pixels, the pasted box region (end exclusive).
    track_id: the object's identity in its stream (tracking stage), None when tracking is off.
    """

    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    rle: dict
    region: np.ndarray | None = None
    region_box: tuple[int, int, int, int] | None = None
    track_id: int | None = None


@dataclass
class FrameResult:
    """Everything published for one frame."""

    frame: Frame
    instances: list[Instance] = field(default_factory=list)
    latency: float = 0.0  # seconds from decode to the end of postprocess
    error: str | None = None  # why this frame has no instances (an engine or postprocess failure)
    # Motion gating (pipeline/stages/gating.py): the engine skipped this frame; its instances are those
    # of this earlier frame of the stream. None: the engine ran on this frame.
    inferred_frame: int | None = None
