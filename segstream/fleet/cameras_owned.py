"""The cameras one worker owns: balancing its share of the book, taking and releasing leases.

Balance (each `fleet.heartbeat` seconds, and at once when the wake channel says the book
changed): cameras no longer wanted (or whose record changed) are released after their drain;
the worker aims at its share, ceil(cameras x capacity / capacity of all live workers) (capacity
weighs the share: a survivor takes a dead peer's cameras beyond it), at most `serve.max_streams`
less its jobs and local streams (the hard bound on one process), gives one back per round when it holds
more, and acquires unowned ones up to it (in random order, so workers starting together try
different cameras first). A camera's record is judged by the source policy as its `origin` says
before anything is opened; a refused one is released and logged once per URL.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from segstream.fleet.cameras import CameraBook, live_workers, share
from segstream.pipeline.stream_spec import StreamSpec, make_source
from segstream.pipeline.streams import SourceError
from segstream.pipeline.wire.schema import CameraRecord

if TYPE_CHECKING:
    from segstream.fleet.worker import Worker

log = logging.getLogger("segstream.fleet.worker")


@dataclass
class OwnedCamera:
    camera_id: str
    record: CameraRecord
    token: int
    acquired: float = field(default_factory=time.monotonic)
    lost: bool = False
    started: threading.Event = field(default_factory=threading.Event)  # its source runs (add_source returned)


def camera_spec(camera_id: str, record: CameraRecord, start_frame: int | None,
                first_track_id: int | None = None) -> StreamSpec:
    """The stream a camera of the book runs as (a live source whatever its URL looks like); a new
    owner continues its frame numbers and track ids after those already on its stream."""
    return StreamSpec(id=camera_id, url=record.url, kind="live", max_frames=record.max_frames,
                      gating=record.gating, start_frame=start_frame, first_track_id=first_track_id)


class CamerasOwned:
    """The cameras `worker` holds; changed on the worker's main loop, read by its heartbeat."""

    def __init__(self, worker: "Worker", book: CameraBook) -> None:
        self.worker = worker
        self.book = book
        self.held: dict[str, OwnedCamera] = {}
        self.refused: dict[str, str] = {}  # camera id -> the URL the source policy refused
        self.lock = threading.Lock()

    def __contains__(self, camera_id: str) -> bool:
        return camera_id in self.held

    def __len__(self) -> int:
        return len(self.held)

    def running_here(self, camera_id: str) -> bool:
        """Whether this worker holds the camera and its source was started (it may be removed now)."""
        with self.lock:
            camera = self.held.get(camera_id)
        return camera is not None and camera.started.is_set()

    def ids(self) -> list[str]:
        with self.lock:
            return list(self.held)

    # -- balancing -------------------------------------------------------------------------
    def balance(self) -> None:
        w = self.worker
        wanted = self.book.wanted()
        for camera_id in [c for c in self.ids() if c not in wanted or self.held[c].record != wanted[c]]:
            self.release(camera_id, "removed from the camera book" if camera_id not in wanted else "its record changed")
        if w.stopping.is_set():
            return
        peers = live_workers(w.client, w.keys, w.fleet.lease)
        capacities = {name: int(p.get("capacity", "1")) for name, p in peers.items()}
        capacities[w.name] = w.capacity
        # capacity weighs the share (a survivor takes a dead peer's cameras beyond it); serve.max_streams
        # is the hard bound on what one process holds
        target = min(share(len(wanted), w.capacity, capacities), w.most_cameras())
        if len(self.held) > target:
            newest = max(self.held.values(), key=lambda c: c.acquired)
            self.release(newest.camera_id, f"rebalancing ({len(self.held)} > share {target})")
            return
        free = [c for c in wanted if c not in self.held and c not in w.removing]
        random.shuffle(free)
        owners = self.book.owners(free)
        for camera_id in free:
            if len(self.held) >= target:
                break
            if owners.get(camera_id) is None:
                self.take(camera_id, wanted[camera_id])

    def take(self, camera_id: str, record: CameraRecord) -> None:
        w = self.worker
        if camera_id in w.pipeline.sources or camera_id in w.local:
            return  # a local stream by that id runs here (or the camera still drains from an earlier lease)
        token = self.book.acquire(camera_id, w.name)
        if not token:
            return
        start, first_track = self.book.next_frame(camera_id), self.book.next_track_id(camera_id)
        try:  # judged by this worker's source policy, as its origin says, before anything is opened
            source = make_source(camera_spec(camera_id, record, start, first_track), w.config, record.origin)
        except (SourceError, ValueError) as exc:
            if self.refused.get(camera_id) != record.url:  # said once per URL, not on every balancing round
                log.warning("camera %s refused: %s", camera_id, str(exc).splitlines()[0])
                self.refused[camera_id] = record.url
            self.book.release(camera_id, w.name)
            return
        self.refused.pop(camera_id, None)
        w.pipeline.redis.fence(camera_id, w.keys.camera_fence(camera_id), token)
        owned = OwnedCamera(camera_id, record, token)
        with self.lock:
            self.held[camera_id] = owned
        try:
            w.pipeline.add_source(source, gating=record.gating)
        except Exception as exc:  # not held, so the lease is not renewed for a camera that runs nowhere
            with self.lock:
                self.held.pop(camera_id, None)
            self.book.release(camera_id, w.name)
            log.warning("camera %s: could not start here (%s); left to the fleet", camera_id,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        owned.started.set()
        log.info("camera %s: owned by %s (token %d)", camera_id, w.name, token)

    def release(self, camera_id: str, why: str, then: Callable[[], Any] | None = None) -> threading.Thread | None:
        """Stop running a camera; its lease is given up only after its drain (its `ended` status
        published). Returns the thread that waits for the drain (None: not held here)."""
        with self.lock:
            camera = self.held.pop(camera_id, None)
        if camera is None:
            return None
        log.info("camera %s: released by %s (%s)", camera_id, self.worker.name, why)

        def after() -> None:
            self.book.release(camera_id, self.worker.name)
            if then is not None:
                then()

        # (released from another thread while take() still adds it: its source is removed once started)
        return self.worker.remove_stream(camera_id, then=after, first=lambda: camera.started.wait(10))

    # -- leases ----------------------------------------------------------------------------
    def renew(self) -> None:
        """From the heartbeat: renew every lease; a lease another worker holds now is lost."""
        with self.lock:
            held = list(self.held.values())
        for camera in held:
            if not camera.lost and not self.book.renew(camera.camera_id, self.worker.name):
                camera.lost = True

    def fenced(self, stream_id: str) -> None:
        with self.lock:
            camera = self.held.get(stream_id)
        if camera is not None:
            camera.lost = True

    def reap_lost(self) -> None:
        """Stop, without waiting for a drain, the cameras another worker took over."""
        for camera_id in self.ids():
            camera = self.held.get(camera_id)
            if camera is not None and camera.lost:
                log.warning("camera %s was taken over by another worker; stopped here", camera_id)
                with self.lock:
                    self.held.pop(camera_id, None)
                self.worker.drop_stream(camera_id)

    def release_all(self) -> None:
        """At shutdown, once the streams drained: give every lease back (another worker takes them at once)."""
        for camera_id in self.ids():
            self.book.release(camera_id, self.worker.name)
