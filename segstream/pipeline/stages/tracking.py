"""Tracking stage: FrameResult -> the same FrameResult with a track id on every instance.

    ... Postprocess --FrameResult--> Tracking --FrameResult (Instance.track_id set)--> Publish

One tracker per stream, ByteTrack-style (Zhang et al., "ByteTrack: Multi-Object Tracking by
Associating Every Detection Box", ECCV 2022): detections scoring >= `high_score` are associated
first, with every confirmed track (also the ones unseen for a while); then the weaker detections
(>= `low_score`) may only continue tracks that were seen in the previous frame, with a stricter
overlap: a faint detection keeps a track alive through a partial occlusion but never takes over
a lost one. What is left is matched to the tentative tracks; what is still left starts a new
tentative track. Every instance gets an id (a tentative track's id too, never None).

Overlap is box IoU against the track's box moved by its velocity, averaged with mask IoU where
both masks are at hand (the track's last mask moved the same way; `mask_weight`): boxes of two
crossing objects overlap a lot, their masks much less. The overlaps of all tracks with all
instances are computed once a frame; each pass is one optimal assignment within its part of them
(`linear_sum_assignment` on 1 - overlap, pairs under the pass's minimum excluded: scipy's
solver re-done in numpy, pipeline/stages/assignment.py, so a run does not load scipy.optimize).

Time is the stream's own clock: pts for files (media seconds), capture time for cameras, so
`max_age` means seconds of video and a camera that reconnects within it keeps its ids.
Scene cut: the frame's colour thumbnail changes wholesale (mean absolute change >= `cut_change`)
and fewer than `cut_matched` of the tracks seen in the previous frame find a strong detection
with overlap >= 0.5; then no identity is carried over: every track ends and every detection
starts a new one. The class is not used: the id follows the object if the detector's class flips.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from segstream.pipeline.stages.assignment import linear_sum_assignment
from segstream.pipeline.config import TrackingSection
from segstream.pipeline.messages import EndOfStream, Frame, FrameResult, Instance, StreamStatus

#: A camera in one of these states has ended (stopped, or given up on): its tracks go, as at an EndOfStream.
FINAL_STATUSES = ("ended", "down")
#: Motion is extrapolated at most this long: beyond a second a constant velocity is a guess.
PREDICT_HORIZON = 1.0
#: Overlap with which a track counts as found again in a frame whose picture changed wholesale.
CUT_SAME_OVERLAP = 0.5
#: Weight of the newest velocity measurement in the track's running velocity.
VELOCITY_SMOOTHING = 0.5
#: (rows, columns) of the colour thumbnail compared between frames to tell a scene cut.
THUMBNAIL_SHAPE = (18, 32)


def stream_clock(frame: Frame) -> float:
    """Seconds on the stream's own clock: media time (pts) for files, capture time for cameras."""
    if not frame.live and frame.pts is not None:
        return float(frame.pts)
    return float(frame.time)


def thumbnail(frame: Frame) -> np.ndarray:
    """float32 [18, 32, 3] in 0..1: block means of the frame's uint8 RGB image, of any size.

    Each block's mean is taken over a 2 x 2 grid of its pixels: a fraction of the cost of every
    pixel (this runs once a frame), and plenty to tell one picture from another. Of a frame
    decoded on the GPU only those 36 x 64 pixels come to the host.
    """
    (rows, cols), k = THUMBNAIL_SHAPE, 2
    h, w = frame.image.shape[:2]
    if h >= rows * k and w >= cols * k:  # every (h // 36)-th row and (w // 64)-th column
        ys, xs = np.arange(rows * k) * (h // (rows * k)), np.arange(cols * k) * (w // (cols * k))
    else:  # a frame smaller than the grid: sample with repeats
        ys = np.linspace(0, h - 1, rows * k).astype(int)
        xs = np.linspace(0, w - 1, cols * k).astype(int)
    grid = frame.sample(ys, xs).astype(np.float32)
    summed = grid.reshape(rows, k, cols * k * 3).sum(axis=1).reshape(rows, cols, k, 3).sum(axis=2)
    return summed / (255.0 * k * k)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of float64 [N, 4] and [M, 4] boxes (x1, y1, x2, y2): float64 [N, M]."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def region_iou(a: np.ndarray, a_box: tuple[int, int, int, int], b: np.ndarray, b_box: tuple[int, int, int, int],
               a_area: int, b_area: int) -> float:
    """IoU of two masks given as bool regions at (x0, y0, x1, y1) frame pixels (end exclusive)."""
    x0, y0 = max(a_box[0], b_box[0]), max(a_box[1], b_box[1])
    x1, y1 = min(a_box[2], b_box[2]), min(a_box[3], b_box[3])
    inter = 0
    if x1 > x0 and y1 > y0:
        inter = int(np.count_nonzero(a[y0 - a_box[1]:y1 - a_box[1], x0 - a_box[0]:x1 - a_box[0]]
                                     & b[y0 - b_box[1]:y1 - b_box[1], x0 - b_box[0]:x1 - b_box[0]]))
    union = a_area + b_area - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One object followed through a stream.

    box: float64 [4] x1, y1, x2, y2 frame pixels at its last detection; velocity: float64 [2]
    px/s of the box centre; region/region_box/area: its last mask (see Instance), None if none.
    hits: detections so far; seen: stream clock (s) of its last detection.
    """

    id: int
    box: np.ndarray
    velocity: np.ndarray
    region: np.ndarray | None
    region_box: tuple[int, int, int, int] | None
    area: int
    hits: int
    seen: float
    confirmed: bool = False
    strong: bool = False  # detected with score >= high_score at least once

    def offset(self, now: float) -> np.ndarray:
        """float64 [2] predicted displacement (px) of the centre from `seen` to `now`."""
        return self.velocity * min(max(now - self.seen, 0.0), PREDICT_HORIZON)


class StreamTracker:
    """The tracks of one stream; `update` assigns ids to one frame's instances."""

    def __init__(self, settings: TrackingSection, next_id: Callable[[], int]) -> None:
        self.settings = settings
        self.next_id = next_id
        self.tracks: list[Track] = []
        self.previous_clock: float | None = None
        self.previous_thumbnail: np.ndarray | None = None
        self.cuts = 0

    def update(self, frame: Frame, instances: list[Instance]) -> list[int]:
        """Track ids for `instances` (in their order); the tracks move on to this frame."""
        s = self.settings
        now = stream_clock(frame)
        picture = thumbnail(frame)
        changed = self.previous_thumbnail is not None and (
            picture.shape != self.previous_thumbnail.shape
            or float(np.abs(picture - self.previous_thumbnail).mean()) >= s.cut_change)
        self.previous_thumbnail = picture
        self.tracks = [t for t in self.tracks if now - t.seen <= s.max_age]
        recent = {id(t) for t in self.tracks if self.previous_clock is not None and t.seen >= self.previous_clock}
        self.previous_clock = now

        boxes = np.array([inst.box for inst in instances], dtype=np.float64).reshape(-1, 4)
        scores = np.array([inst.score for inst in instances], dtype=np.float64)
        areas = [int(np.count_nonzero(inst.region)) if inst.region is not None else 0 for inst in instances]
        # One overlap matrix [tracks, instances] for the frame; each step below matches within a part of it.
        overlap = self.overlap(self.tracks, instances, boxes, areas, now) if self.tracks and instances else None
        row = {id(t): r for r, t in enumerate(self.tracks)}
        confirmed = [t for t in self.tracks if t.confirmed]
        tentative = [t for t in self.tracks if not t.confirmed]
        owner: dict[int, Track] = {}  # instance index -> track
        free = set(range(len(instances)))

        def associate(tracks: list[Track], candidates: list[int], minimum: float) -> dict[int, Track]:
            """Optimal one-to-one matching of tracks and candidate instances: {instance index: track}."""
            if overlap is None or not tracks or not candidates:
                return {}
            part = overlap[np.ix_([row[id(t)] for t in tracks], candidates)]
            rows, cols = linear_sum_assignment(np.where(part >= minimum, 1.0 - part, 1e6))
            return {candidates[c]: tracks[r] for r, c in zip(rows, cols) if part[r, c] >= minimum}

        high = [i for i in range(len(instances)) if scores[i] >= s.high_score]
        first = associate(confirmed, high, s.match_overlap)
        owner.update(first)
        free -= first.keys()
        # Across a changed picture only a close match says "the same object": a new object of
        # the next scene may well sit where an old one was, but rarely on top of it.
        carried = sum(1 for i, t in first.items() if id(t) in recent and overlap[row[id(t)], i] >= CUT_SAME_OVERLAP)
        if changed and (not recent or carried < s.cut_matched * len(recent)):
            # Scene cut: the picture changed wholesale and most of what was there is gone.
            self.cuts += bool(self.tracks)
            self.tracks, owner, free = [], {}, set(range(len(instances)))
        else:
            taken = {id(t) for t in owner.values()}
            alive = [t for t in confirmed if id(t) in recent and id(t) not in taken]
            weak = [i for i in sorted(free) if s.low_score <= scores[i] < s.high_score]
            second = associate(alive, weak, s.low_match_overlap)
            owner.update(second)
            free -= second.keys()
            third = associate(tentative, sorted(free), s.tentative_overlap)
            owner.update(third)
            free -= third.keys()

        matched = {id(t) for t in owner.values()}
        # A tentative track missed once was a passing false positive: it ends at once.
        self.tracks = [t for t in self.tracks if id(t) in matched or t.confirmed]
        for i, track in owner.items():
            self._observe(track, instances[i], boxes[i], areas[i], scores[i], now)
        for i in sorted(free):
            track = Track(id=self.next_id(), box=boxes[i].copy(), velocity=np.zeros(2), region=instances[i].region,
                          region_box=instances[i].region_box, area=areas[i], hits=1, seen=now,
                          strong=bool(scores[i] >= s.high_score))
            track.confirmed = track.strong and s.min_hits <= 1
            self.tracks.append(track)
            owner[i] = track
        return [owner[i].id for i in range(len(instances))]

    def _observe(self, track: Track, inst: Instance, box: np.ndarray, area: int, score: float, now: float) -> None:
        """Move `track` to its new detection: box, mask, velocity, confirmation."""
        dt = now - track.seen
        if dt > 0:
            measured = ((box[:2] + box[2:]) - (track.box[:2] + track.box[2:])) / (2 * dt)
            # The first measurement is the whole estimate; later ones are smoothed (box jitter).
            smoothing = 1.0 if track.hits == 1 else VELOCITY_SMOOTHING
            track.velocity = smoothing * measured + (1 - smoothing) * track.velocity
        track.box = box.copy()
        if inst.region is not None and inst.region_box is not None:
            track.region, track.region_box, track.area = inst.region, inst.region_box, area
        track.hits += 1
        track.seen = now
        track.strong = track.strong or score >= self.settings.high_score
        if not track.confirmed and track.strong and track.hits >= self.settings.min_hits:
            track.confirmed = True

    def overlap(self, tracks: list[Track], instances: list[Instance], boxes: np.ndarray, areas: list[int],
                now: float) -> np.ndarray:
        """float64 [T, D]: box IoU at the predicted positions, averaged with mask IoU where both have masks."""
        offsets = np.stack([t.offset(now) for t in tracks])  # [T, 2] px
        iou = box_iou(np.stack([t.box for t in tracks]) + np.tile(offsets, 2), boxes)
        weight = self.settings.mask_weight
        if weight <= 0:
            return iou
        out = iou.copy()
        shifts = np.rint(offsets).astype(int).tolist()
        for r, c in zip(*np.nonzero(iou > 0)):
            track, inst = tracks[r], instances[c]
            if track.region is None or track.region_box is None or inst.region is None or inst.region_box is None:
                continue
            (dx, dy), (x0, y0, x1, y1) = shifts[r], track.region_box
            moved = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
            mask = region_iou(track.region, moved, inst.region, inst.region_box, track.area, areas[c])
            out[r, c] = (1 - weight) * iou[r, c] + weight * mask
        return out


#: Id counters of forgotten streams kept (see Tracking.forget).
RETIRED_KEPT = 10_000


class _TrackIds:
    """The next track id of one stream: ids only grow, so none is ever given twice."""

    def __init__(self) -> None:
        self.next = 1

    def take(self) -> int:
        taken, self.next = self.next, self.next + 1
        return taken


class Tracking:
    """The stage: keeps one StreamTracker per stream, dropped at that stream's EndOfStream (a file)
    or final StreamStatus (a camera `ended` or `down`).

    FrameResults get `track_id` on every instance (not those of a frame the engine failed on: it
    has none); every message passes through untouched otherwise.
    Ids count from 1 per stream (or from the `first_id` given to `start_stream`: a stream taken
    over from another process continues after the ids already published) and are never reused
    within a run, even after an EndOfStream.
    """

    name = "tracking"
    take = 1

    def __init__(self, settings: TrackingSection) -> None:
        self.settings = settings
        self.trackers: dict[str, StreamTracker] = {}
        self._ids: dict[str, _TrackIds] = {}
        # Id counters of forgotten streams, so a stream added again never reuses an id: only the
        # newest RETIRED_KEPT are kept (a counter is a few dozen bytes; a service runs for months).
        self._retired: collections.OrderedDict[str, _TrackIds] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _counter(self, stream_id: str) -> _TrackIds:
        """The stream's id counter (under the lock): its own, a retired one, or a new one."""
        counter = self._ids.get(stream_id) or self._retired.pop(stream_id, None) or _TrackIds()
        self._ids[stream_id] = counter
        return counter

    def start_stream(self, stream_id: str, first_id: int | None = None) -> None:
        """A stream is added (any thread): its new tracks get ids >= `first_id` (None: from 1,
        or after the ids it had earlier in this run)."""
        with self._lock:
            counter = self._counter(stream_id)
            if first_id is not None:
                counter.next = max(counter.next, first_id)

    def forget(self, stream_id: str) -> None:
        """A stream is over (any thread): drop its tracker, retire its id counter."""
        with self._lock:
            self.trackers.pop(stream_id, None)
            counter = self._ids.pop(stream_id, None)
            if counter is not None:
                self._retired[stream_id] = counter
                while len(self._retired) > RETIRED_KEPT:
                    self._retired.popitem(last=False)

    def process(self, items: list[Any]) -> Iterable[Any]:
        for item in items:
            if isinstance(item, FrameResult):
                if item.error is None:  # a frame the engine failed on says nothing about the objects
                    self.track(item)
            elif isinstance(item, EndOfStream) or (isinstance(item, StreamStatus) and item.status in FINAL_STATUSES):
                self.trackers.pop(item.stream_id, None)
            yield item

    def flush(self) -> Iterable[Any]:
        return ()

    def track(self, result: FrameResult) -> None:
        stream = result.frame.stream_id
        tracker = self.trackers.get(stream)
        if tracker is None:
            with self._lock:
                tracker = self.trackers[stream] = StreamTracker(self.settings, self._counter(stream).take)
        for inst, track_id in zip(result.instances, tracker.update(result.frame, result.instances)):
            inst.track_id = track_id
