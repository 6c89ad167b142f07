"""What the HTTP app (service/app.py) calls on a fleet process: the streams of the whole fleet, and
on `segstream serve` the write API (service/control.py's StreamsControl protocol; commands/serve.py
wires the two, so neither package imports the other).

    POST   a camera (a live source over the network): judged by the source policy (origin "api")
           and `serve.max_streams` (the book's cameras + this process's local streams), then stored
           in the camera book `<p>fleet:cameras` and announced on the wake channel: some worker
           picks it up at once (leases and fencing decide which, exactly one).
    POST   anything else (a local file or device, a file over http(s)): runs here, on the process
           that accepted it (its path is local to this machine); not stored, so not replayed after a
           restart (`segstream submit` is the exactly-once path for files).
    DELETE a camera anywhere in the fleet (out of the book; its owner drains it), or a local stream
           of this process; a local stream of another process: StreamElsewhere (409, naming it).
    GET    every stream of the fleet, from the live workers' heartbeat records (this process's
           own fresh), each with `worker`; a camera of the book that nobody runs yet: "pending".
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from segstream.fleet.heartbeat import fleet_streams
from segstream.fleet.cameras import is_camera
from segstream.fleet.worker import REDIS_TROUBLE, Worker
from segstream.pipeline.admission import BookUnavailable, StreamElsewhere, TooManyStreams
from segstream.pipeline.sources.locations import redact
from segstream.pipeline.sources.policy import check_source
from segstream.pipeline.stream_spec import StreamExists, StreamSpec, UnknownStream
from segstream.pipeline.wire.schema import CameraRecord

#: How long POST waits for some worker to take a new camera before answering "pending".
PICKUP_WAIT = 2.0
REDIS_FAILURES = REDIS_TROUBLE + (redis.RedisError,)


def pending_entry(camera_id: str, record: CameraRecord, owner: str | None) -> dict[str, Any]:
    """How GET /streams lists a camera of the book that no heartbeat record shows running (yet)."""
    return {"id": camera_id, "url": redact(record.url), "kind": "live", "state": "connecting" if owner else "pending",
            "worker": owner, "since": None, "reconnects": 0, "frames_decoded": 0, "frames_published": 0,
            "instances": 0, "dropped": {}, "errors": 0, "fps_in": 0.0, "fps_out": 0.0, "error": None,
            "latency_p50": None, "latency_p99": None}


class FleetControl:
    """`max_streams`: serve.max_streams; thread-safe (the HTTP handlers run on a thread pool)."""

    def __init__(self, worker: Worker, max_streams: int) -> None:
        self.worker = worker
        self.max_streams = max_streams
        self._adding = threading.Lock()  # two concurrent POSTs cannot both take the last place

    @property
    def pipeline(self) -> Any:
        return self.worker.pipeline

    def ready(self) -> bool:
        return self.worker.ready()

    def status(self) -> dict[str, Any]:
        return self.worker.snapshot()

    def redis(self) -> tuple[bool, float | None]:
        return self.worker.redis_state()

    # -- reading ---------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        w = self.worker
        own = {s["id"]: {**s, "worker": w.name} for s in w.pipeline.registry.snapshot()}
        try:
            others = fleet_streams(w.client, w.keys, w.fleet.lease, skip=w.name)
            wanted = w.book.wanted()
            owners = w.book.owners(sorted(wanted))
        except REDIS_FAILURES:  # Redis away: what this process knows
            return list(own.values())
        listed = dict(own)
        for name, streams in others.items():
            for entry in streams:
                sid = entry.get("id")
                mine = sid in own and owners.get(sid) in (None, w.name)
                if not mine and (sid not in listed or owners.get(sid) == name):
                    listed[sid] = {**entry, "worker": name}
        for camera_id, record in wanted.items():
            if camera_id not in listed:
                listed[camera_id] = pending_entry(camera_id, record, owners.get(camera_id))
        return list(listed.values())

    def get(self, stream_id: str) -> dict[str, Any]:
        state = self.worker.pipeline.registry.get(stream_id)
        if state is not None:
            return {**state.snapshot(), "worker": self.worker.name}
        for entry in self.list():
            if entry["id"] == stream_id:
                return entry
        raise UnknownStream(stream_id)

    # -- writing ---------------------------------------------------------------------------
    def add(self, spec: StreamSpec) -> dict[str, Any]:
        """Raises SourceRefused (nothing opened, nothing stored), SourceError (an unreadable file),
        StreamExists, TooManyStreams, BookUnavailable."""
        w = self.worker
        camera = is_camera(spec)
        if camera:  # judged at the edge: a refused URL never reaches the book
            check_source(spec.url, w.config.sources, "api")
        with self._adding:
            try:
                wanted = w.book.wanted()
                if spec.id in w.pipeline.registry or spec.id in wanted or self._running_elsewhere(spec.id):
                    raise StreamExists(spec.id)
                local = sum(1 for s in w.pipeline.registry.all() if s.stream_id in w.local)
                held = len(wanted) + local
                if held >= self.max_streams:
                    raise TooManyStreams(f"the service holds {held} streams, its limit (serve.max_streams = "
                                         f"{self.max_streams}): DELETE one first (ended streams count until deleted)")
                if camera:
                    settings = {k: v for k, v in (("max_frames", spec.max_frames), ("gating", spec.gating)) if v}
                    if not w.book.add(spec.id, spec.url, only_new=True, kind="live", origin="api", **settings):
                        raise StreamExists(spec.id)
            except REDIS_FAILURES as exc:
                raise BookUnavailable(f"Redis is unreachable, the camera book cannot be changed now ({type(exc).__name__})") from None
            if not camera:
                return {**w.add_local(spec, "api").snapshot(), "worker": w.name}
        try:  # stored: from here on the answer is 201 (without the wake, the next balancing round takes it)
            w.book.wake()
        except REDIS_FAILURES:
            pass
        return self._picked_up(spec.id, CameraRecord(url=spec.url, kind="live", origin="api"))

    def _running_elsewhere(self, stream_id: str) -> str | None:
        w = self.worker
        for name, streams in fleet_streams(w.client, w.keys, w.fleet.lease, skip=w.name).items():
            if any(entry.get("id") == stream_id for entry in streams):
                return name
        return None

    def _picked_up(self, camera_id: str, stored: CameraRecord) -> dict[str, Any]:
        """The new camera as listed once some worker took it (its first connection attempt under
        way), or pending after PICKUP_WAIT seconds (or at once when Redis cannot tell, or someone
        deleted it meanwhile: it was stored, so the POST still succeeded)."""
        w = self.worker
        deadline = time.monotonic() + PICKUP_WAIT
        while True:
            state = w.pipeline.registry.get(camera_id)
            if state is not None and w.cameras.running_here(camera_id):  # fully started: a DELETE may follow at once
                return {**state.snapshot(), "worker": w.name}
            try:
                owner = w.book.owners([camera_id])[camera_id]
                record = w.book.wanted().get(camera_id)
            except REDIS_FAILURES:
                return pending_entry(camera_id, stored, None)
            if record is None:  # deleted meanwhile
                return pending_entry(camera_id, stored, None)
            if (owner is not None and owner != w.name) or time.monotonic() > deadline:
                return pending_entry(camera_id, record, owner)
            time.sleep(0.05)

    def remove(self, stream_id: str) -> dict[str, Any]:
        """Stop a stream; answers with its last state. Raises UnknownStream, StreamElsewhere, BookUnavailable."""
        w = self.worker
        state = w.pipeline.registry.get(stream_id)
        if stream_id in w.local and state is not None:
            w.remove_local(stream_id)  # drained: a file gets its EOS entry
            return {**state.snapshot(), "worker": w.name}
        try:
            removed = w.book.remove(stream_id)
            if removed:
                w.book.wake()
            last = None if state is not None else next((e for e in self.list() if e["id"] == stream_id), None)
        except REDIS_FAILURES as exc:
            raise BookUnavailable(f"Redis is unreachable, the camera book cannot be changed now ({type(exc).__name__})") from None
        if not removed:
            if state is not None:  # a file job of the fleet running here
                raise StreamElsewhere(stream_id, f"the fleet's file jobs ({w.name}; it ends by itself)")
            if last is not None:
                raise StreamElsewhere(stream_id, last["worker"])
            raise UnknownStream(stream_id)
        self._drained(stream_id)
        if state is not None:
            return {**state.snapshot(), "worker": w.name}
        return last or {"id": stream_id, "state": "ended", "worker": None}

    def _drained(self, camera_id: str) -> None:
        """Wait until the camera's owner drained it (its `ended` status on Redis) and gave up its lease."""
        w = self.worker
        releasing = w.cameras.release(camera_id, "removed over the API")
        limit = w.config.shutdown_timeout + 2
        if releasing is not None:
            releasing.join(limit)
            return
        deadline = time.monotonic() + limit
        try:
            while w.book.owners([camera_id])[camera_id] is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        except REDIS_FAILURES:
            pass
