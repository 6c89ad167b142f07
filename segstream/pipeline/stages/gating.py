"""Motion gating: run the engine on a frame only when its stream's picture changed.

    Source --Frame--> Gate --Frame (infer) | Carried (skip)--> Preprocess --> ... --> Tracking
        --FrameResult | Carried--> CarryOver --FrameResult (every frame)--> Publish

The gate is the first stage. Per stream it keeps a small, blurred colour picture of the last
frame it sent to the engine (the *reference*) and compares each new frame with it. A frame goes
to the engine when

- it is the stream's first frame, or the first after a reconnect (any StreamStatus resets it);
- the picture changed: enough cells differ from the reference by more than the stream's own
  noise allows (a scene cut is a change of most cells);
- the last inference is older than `gating.max_interval` seconds of the stream's clock (media
  time for files, capture time for cameras), so slow changes and lighting drift are caught.

Otherwise it becomes a `Carried` marker: it travels down the same queues as the frames (so each
stream's entries stay in order), every stage passes it on untouched (no preprocess, no engine,
no postprocess, and the tracker does not age its tracks on it), and `CarryOver`, just before
publish, turns it into a FrameResult with the instances of the stream's last inferred frame
(same masks, boxes, track ids) and `inferred_frame` set (wire: `"inferred": false`,
`"inferred_frame": n`). A marker takes no room in the queues after the gate (the gate, on its
own thread, keeps draining the cameras while the engine is busy; pipeline/streaming.py); a camera
frame for the engine that is dropped while it waits makes the stream's next frame go (`lost`).

The noise threshold is learned per stream and per cell: each cell keeps the mean squared
change between consecutive frames (a running mean over the first frames, then an exponential
one whose samples are clipped at 3 sigma, so a passing object barely raises it); a cell counts
as changed when its change against the reference, less the frame's median change (global
brightness, exposure), exceeds `noise_factor` times its noise (root mean square) plus
`min_change` grey levels, and the gate opens at `min_cells` changed cells. Sensor noise, noisy
textures and compression flicker (sparse, a few grey levels, at the encoder's P-frames) stay
under it; an object moving by a couple of pixels does not.

Numpy only: no torch (the gate runs on a torch-free install; a frame decoded on the GPU gives
only its sampled pixels to the host, via Frame.sample).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np

from segstream.pipeline.messages import EndOfStream, Frame, FrameResult, StreamStatus

GatingMode = Literal["auto", "on", "off"]
Reason = Literal["first", "reconnect", "lost", "change", "cut", "hold", "interval"]

#: A camera in one of these states has ended: its gate state goes (as at an EndOfStream).
FINAL_STATUSES = ("ended", "down")
#: Rows and columns of the sample grid taken from a frame (every k-th pixel of a 640x360 frame
#: at k = 2); 4 x 4 samples are averaged into one cell, which is the blur.
SAMPLE_SHAPE = (180, 320)
CELL = 4
_STARTS = (np.arange(0, SAMPLE_SHAPE[0], CELL), np.arange(0, SAMPLE_SHAPE[1], CELL))
#: RGB -> luma and two colour differences (ITU-R BT.601, levels 0..255 around 0 for the colour).
YCC = np.array([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]], dtype=np.float32).T
#: min_change per plane, as multiples: compression keeps colour at half resolution, so its
#: flicker is coarser and larger than the luma's.
PLANE_FLOOR = np.array([1.0, 2.0, 2.0], dtype=np.float32)


@dataclass
class Carried:
    """A frame the gate did not send to the engine: published with the instances of frame
    `inferred_frame` (the stream's last inferred frame), by CarryOver."""

    frame: Frame
    inferred_frame: int


@dataclass(frozen=True)
class GateSettings:
    """The knobs of the change test (config `gating`, pipeline/config.py)."""

    max_interval: float = 2.0  # seconds of stream clock between inferences, at most
    noise_factor: float = 2.5  # a cell changed: |change| > noise_factor * its noise + min_change
    min_change: float = 3.0  # levels (0..255, luma; twice that for colour): above compression flicker
    min_cells: int = 2  # changed cells that open the gate
    cut_share: float = 0.5  # share of changed cells that makes a scene cut
    warmup: int = 8  # frames over which the noise is a plain running mean
    noise_rate: float = 0.05  # weight of a new sample in the noise's running mean afterwards
    hold: float = 0.0  # seconds (stream clock) the gate stays open after a change


def cells(frame: Frame) -> np.ndarray:
    """float32 [45, 80, 3]: the frame's luma and colour differences (YCC), sampled on a 180 x 320
    grid and averaged over 4 x 4 blocks (a blur), in levels of 0..255. Any frame size; a GPU frame
    sends only the samples."""
    rows, cols = SAMPLE_SHAPE
    h, w = frame.image.shape[:2]
    ys = np.linspace(0, h - 1, rows).round().astype(np.intp)
    xs = np.linspace(0, w - 1, cols).round().astype(np.intp)
    if isinstance(frame.image, np.ndarray):
        rgb = np.take(np.take(frame.image, ys, axis=0), xs, axis=1)
    else:  # a device frame: only the samples come to the host
        rgb = frame.sample(ys, xs)
    # Block sums in uint16 (16 x 255 fits): a third of the time of a float mean over two axes.
    summed = np.add.reduceat(np.add.reduceat(rgb, _STARTS[0], axis=0, dtype=np.uint16), _STARTS[1], axis=1,
                             dtype=np.uint16)
    return (summed.astype(np.float32) * (1.0 / CELL ** 2)) @ YCC


def stream_clock(frame: Frame) -> float:
    """Seconds on the stream's own clock: media time (pts) for files, capture time for cameras."""
    if not frame.live and frame.pts is not None:
        return float(frame.pts)
    return float(frame.time)


@dataclass
class StreamGate:
    """One stream's gate: the reference picture, the noise per cell, the last inference."""

    settings: GateSettings
    reference: np.ndarray | None = None  # cells of the last inferred frame
    previous: np.ndarray | None = None  # cells of the previous frame (noise learning)
    variance: np.ndarray | None = None  # mean squared change per cell between consecutive frames
    noise: np.ndarray | None = None  # its square root: the cell's noise (grey levels)
    samples: int = 0
    last_index: int = -1  # index of the last inferred frame
    anchor: int = -1  # index of the frame a (re)start sent to the engine: never dropped (see Gate.droppable)
    lost: bool = False  # the frame last sent to the engine was dropped before the engine ran on it
    last_clock: float = 0.0
    changed_clock: float | None = None  # stream clock of the last change seen
    reasons: dict[str, int] = field(default_factory=dict)

    def decide(self, frame: Frame) -> Reason | None:
        """The reason to send `frame` to the engine, or None to carry the last result over."""
        picture = cells(frame)
        reason, changed, change = self._reason(frame, picture)  # before learning: a change is not noise
        self._learn(picture, changed, change)
        if reason is not None:
            self.reference, self.last_index, self.last_clock = picture, frame.index, stream_clock(frame)
            self.lost = False
            if reason in ("first", "reconnect"):
                self.anchor = frame.index
        self.reasons[reason or "gated"] = self.reasons.get(reason or "gated", 0) + 1
        return reason

    def reset(self) -> None:
        """A reconnect: the next frame goes to the engine (the noise learned so far is kept)."""
        self.reference = self.previous = None

    def forget_reference(self) -> None:
        """The frame last sent to the engine was dropped on its way: the next frame goes (the
        results published meanwhile are those of the frame inferred before)."""
        self.reference, self.lost = None, True

    def _learn(self, picture: np.ndarray, changed: np.ndarray | None, change: np.ndarray | None) -> None:
        """Update each cell's noise from its change since the previous frame and against the
        reference (`change`: what the test measures; an encoder's picture drifts between its key
        frames), except in the cells that differ from the reference (`changed`, bool [45, 80]):
        an object moving for a while must not become noise that hides it."""
        if self.previous is not None:
            sample = np.square(picture - self.previous)
            if change is not None:
                sample = np.maximum(sample, np.square(change))
            self.samples += 1
            if self.variance is None:
                # A first guess for every cell from the frame's typical change; refined per cell.
                self.variance = np.full_like(sample, float(np.median(sample)))
            s = self.settings
            # Clipped at 3 sigma (plus min_change): an object moving through a cell raises its
            # noise only a little a frame, while a noisy texture's cell gets there in a few frames.
            clipped = np.minimum(sample, 9.0 * self.variance + (s.min_change * PLANE_FLOOR) ** 2)
            rate = 1.0 / self.samples if self.samples <= s.warmup else s.noise_rate
            update = rate * (clipped - self.variance)
            if changed is not None:
                update[changed] = 0.0
            self.variance += update
            self.noise = np.sqrt(self.variance)
        self.previous = picture

    def _reason(self, frame: Frame, picture: np.ndarray) -> tuple[Reason | None, np.ndarray | None, np.ndarray | None]:
        """(why the engine runs on this frame or None, the cells that differ from the reference:
        bool [45, 80], the change against the reference: float32 [45, 80, 3])."""
        if self.reference is None:
            if self.lost:
                return "lost", None, None
            return ("first" if self.last_index < 0 else "reconnect"), None, None
        s = self.settings
        change = picture - self.reference
        change -= np.median(change, axis=(0, 1))  # a global brightness change (exposure) moves no object
        noise = self.noise if self.noise is not None else np.zeros_like(change)
        # A noise learned from few frames is uncertain: ask for more until it is not.
        factor = s.noise_factor * (1.0 + s.warmup / (2.0 * max(self.samples, 1)))
        # A cell changed when any of its colour planes did: an object may differ from what it
        # covers in hue only.
        changed = (np.abs(change) > factor * noise + s.min_change * PLANE_FLOOR).any(axis=2)
        count = int(np.count_nonzero(changed))
        now = stream_clock(frame)
        if count >= s.cut_share * changed.size:
            self.changed_clock = now
            return "cut", changed, change
        if count >= s.min_cells:
            self.changed_clock = now
            return "change", changed, change
        if self.changed_clock is not None and now - self.changed_clock < s.hold:
            return "hold", changed, change
        if now - self.last_clock >= s.max_interval:
            return "interval", changed, change
        return None, changed, change


class Gate:
    """Stage: Frame -> Frame (to the engine) or Carried (skipped); markers pass on.

    mode_of(stream_id, live) -> whether the stream is gated (per-stream settings, config's mode).
    on_decision(stream_id, inferred) counts each frame (StreamState.frame_gated).
    """

    name = "gate"

    def __init__(self, settings: GateSettings, take: int, mode_of: Callable[[str, bool], bool],
                 on_decision: Callable[[str, bool], None] | None = None) -> None:
        self.settings = settings
        self.take = take
        self.mode_of = mode_of
        self.on_decision = on_decision
        self.streams: dict[str, StreamGate] = {}

    def process(self, items: list[Any]) -> Iterable[Any]:
        out: list[Any] = []
        for item in items:
            if isinstance(item, Frame):
                out.append(self.frame(item))
            else:
                if isinstance(item, EndOfStream) or (isinstance(item, StreamStatus) and item.status in FINAL_STATUSES):
                    self.streams.pop(item.stream_id, None)
                elif isinstance(item, StreamStatus) and item.stream_id in self.streams:
                    self.streams[item.stream_id].reset()
                out.append(item)
        return out

    def frame(self, frame: Frame) -> Frame | Carried:
        stream = frame.stream_id
        if not self.mode_of(stream, frame.live):
            self.streams.pop(stream, None)  # gating turned off: nothing kept
            if self.on_decision is not None:
                self.on_decision(stream, True)
            return frame
        gate = self.streams.get(stream)
        if gate is None:
            gate = self.streams[stream] = StreamGate(self.settings)
        reason = gate.decide(frame)
        if self.on_decision is not None:
            self.on_decision(stream, reason is not None)
        if reason is None:
            return Carried(frame, gate.last_index)
        return frame

    def droppable(self, item: Any) -> bool:
        """Whether a camera frame past the gate may be dropped while it waits for the engine:
        any but the first after a (re)start (the frames carried after it need its result).
        Called on the gate's thread (the queue after the gate evicts as the gate puts)."""
        if not isinstance(item, Frame) or not item.live:
            return False
        gate = self.streams.get(item.stream_id)
        return gate is None or gate.anchor != item.index

    def dropped(self, frame: Frame) -> None:
        """A frame past the gate was dropped before the engine saw it (on the gate's thread):
        the stream's reference is no picture the engine ran on, so its next frame goes."""
        gate = self.streams.get(frame.stream_id)
        if gate is not None and gate.last_index == frame.index:
            gate.forget_reference()

    def flush(self) -> Iterable[Any]:
        return ()


class CarryOver:
    """Stage before publish: Carried -> FrameResult with the stream's last inferred instances
    (same Instance objects: masks, boxes, track ids) and `inferred_frame`; the rest passes on.

    A stream's last result is dropped at its EndOfStream or final status.
    """

    name = "carry"
    take = 1

    def __init__(self) -> None:
        self.last: dict[str, FrameResult] = {}

    def process(self, items: list[Any]) -> Iterable[Any]:
        out: list[Any] = []
        for item in items:
            if isinstance(item, FrameResult):
                if item.inferred_frame is None:
                    self.last[item.frame.stream_id] = item
                out.append(item)
            elif isinstance(item, Carried):
                out.append(self.carry(item))
            else:
                if isinstance(item, EndOfStream) or (isinstance(item, StreamStatus) and item.status in FINAL_STATUSES):
                    self.last.pop(item.stream_id, None)
                out.append(item)
        return out

    def carry(self, item: Carried) -> FrameResult:
        frame = item.frame
        source = self.last.get(frame.stream_id)
        if source is None:  # cannot happen: the inferred frame went down the same queues first
            return FrameResult(frame=frame, latency=time.time() - frame.time, error="no inferred frame to carry over")
        return FrameResult(frame=frame, instances=list(source.instances), latency=time.time() - frame.time,
                           error=source.error, inferred_frame=source.frame.index)

    def flush(self) -> Iterable[Any]:
        return ()


def in_stream_order(items: list[Any]) -> Iterator[list[Frame] | Any]:
    """Group frames for one batch without reordering any stream: yields lists of frames (a batch
    each) and the markers (Carried, StreamStatus, EndOfStream) between them, such that every
    stream's items come out in the order they came in. Streams may interleave freely; a batch is
    cut only where a stream's marker sits between two of that stream's frames.

    The gate turns some of a take's frames into markers, so a stream's marker may sit between two
    of that stream's frames in what preprocess gets (the first stage's fair inbox never does that).
    """
    group: list[Frame] = []
    in_group: set[str] = set()
    after: list[Any] = []  # markers that follow frames of their stream in the group
    waiting: set[str | None] = set()
    for item in items:
        if isinstance(item, Frame):
            if item.stream_id in waiting:  # the stream's marker must come before this frame
                yield group
                yield from after
                group, in_group, after, waiting = [], set(), [], set()
            group.append(item)
            in_group.add(item.stream_id)
            continue
        stream = getattr(item, "stream_id", None)
        if stream is None:
            stream = getattr(getattr(item, "frame", None), "stream_id", None)
        if stream in in_group or stream is None:
            after.append(item)
            waiting.add(stream)
        else:  # nothing of its stream is in the group: it may go before the batch
            yield item
    if group:
        yield group
    yield from after


def resolve_mode(mode: GatingMode, live: bool) -> bool:
    """Whether a stream is gated: auto gates cameras, not files."""
    return mode == "on" or (mode == "auto" and live)
