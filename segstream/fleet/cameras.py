"""Cameras: the wanted ones in a Redis hash, each owned by one worker through a lease.

A worker acquires a camera with SET owner NX PX lease and, in the same Lua step, a new fencing
token (INCR); it renews the lease on every heartbeat only while it still holds it. A worker that
stops heartbeating loses its cameras after `fleet.lease` seconds; another one acquires them and
its token fences out anything the old owner still tries to write. Balance: each worker aims at
ceil(cameras x its capacity / capacity of all live workers) and gives one back per heartbeat
when it holds more (a new worker thus gets its share without anyone dying).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import logging

import redis
from pydantic import ValidationError

from segstream.fleet.keys import FleetKeys
from segstream.fleet.jobs import _text
from segstream.fleet.track_ids import next_track_id
from segstream.pipeline.config import SourcesSection
from segstream.pipeline.sources.locations import source_kind
from segstream.pipeline.sources.policy import SourceRefused, check_source, scheme_of
from segstream.pipeline.stream_spec import StreamSpec
from segstream.pipeline.wire.schema import CameraRecord, MalformedEntry, WorkerRecord, message_kind, parse_entry, why
from segstream.pipeline.wire.stream_id import check_stream_id

log = logging.getLogger(__name__)

# KEYS: owner, fence. ARGV: worker, lease ms. -> the new token, or 0 when owned by someone
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('INCR', KEYS[2]) end
return 0
"""
# KEYS: owner. ARGV: worker, lease ms. -> 1 renewed, 0 lost
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
# KEYS: owner. ARGV: worker.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def share(cameras: int, capacity: int, capacities: dict[str, int]) -> int:
    """How many of `cameras` a worker of `capacity` should own, given every live worker's capacity."""
    total = sum(capacities.values())
    if cameras == 0 or total <= 0:
        return 0
    return min(cameras, math.ceil(cameras * capacity / total))


class CameraBook:
    def __init__(self, client: redis.Redis, keys: FleetKeys, lease: float = 10.0) -> None:
        self.client = client
        self.keys = keys
        self.lease = lease
        self.lease_ms = int(lease * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._reported: set[tuple[str, bytes]] = set()  # malformed cameras already warned about

    # -- the wanted cameras (segstream cameras add|remove|list, POST/DELETE /streams) ---------
    def add(self, camera_id: str, url: str, only_new: bool = False, **settings: Any) -> bool:
        """Want a camera (its settings: CameraRecord's fields). True when new; an existing camera's
        record is replaced, or, with only_new, left alone (False: the id is taken)."""
        check_stream_id(camera_id, "camera id")  # ValueError: one line naming the rule
        record = CameraRecord.model_validate({"url": url, **settings})
        value = record.model_dump_json(exclude_defaults=True)
        if only_new:
            return bool(self.client.hsetnx(self.keys.cameras, camera_id, value))
        return bool(self.client.hset(self.keys.cameras, camera_id, value))

    def remove(self, camera_id: str) -> bool:
        return bool(self.client.hdel(self.keys.cameras, camera_id))

    def wanted(self) -> dict[str, CameraRecord]:
        """camera id -> its record; a value that does not validate is skipped (and logged once)."""
        out = {}
        for k, v in self.client.hgetall(self.keys.cameras).items():
            camera_id = _text(k)
            try:
                check_stream_id(camera_id, "camera id")
                out[camera_id] = CameraRecord.model_validate(json.loads(v))
            except (ValueError, RecursionError) as exc:  # ValidationError is a ValueError
                if (camera_id, v) not in self._reported:  # once per bad value, not on every heartbeat
                    self._reported.add((camera_id, v))
                    reason = why(exc) if isinstance(exc, ValidationError) else str(exc).splitlines()[0][:200]
                    log.warning("camera %r in %s skipped: %s", camera_id[:80], self.keys.cameras, reason)
        return out

    def wake(self) -> None:
        """Tell every worker to balance now (a camera was added or removed)."""
        self.client.publish(self.keys.wake, b"1")

    def owners(self, camera_ids: list[str]) -> dict[str, str | None]:
        values = self.client.mget([self.keys.camera_owner(c) for c in camera_ids]) if camera_ids else []
        return {c: (_text(v) if v is not None else None) for c, v in zip(camera_ids, values)}

    # -- leases --------------------------------------------------------------------------
    def acquire(self, camera_id: str, worker: str) -> int:
        """The new fencing token, or 0 when another worker owns the camera."""
        return int(self._acquire(keys=[self.keys.camera_owner(camera_id), self.keys.camera_fence(camera_id)],
                                 args=[worker, self.lease_ms]))

    def renew(self, camera_id: str, worker: str) -> bool:
        return bool(self._renew(keys=[self.keys.camera_owner(camera_id)], args=[worker, self.lease_ms]))

    def release(self, camera_id: str, worker: str) -> None:
        self._release(keys=[self.keys.camera_owner(camera_id)], args=[worker])

    def next_frame(self, camera_id: str) -> int | None:
        """The number after the newest frame on the camera's stream: a new owner continues it."""
        for _, fields in self.client.xrevrange(self.keys.results(camera_id), count=32):
            try:
                message = parse_entry(fields)
            except MalformedEntry:
                continue  # not a frame to continue from
            if message_kind(message) == "frame":
                return message["frame"] + 1
        return None

    def next_track_id(self, camera_id: str) -> int | None:
        """The id after the highest track id on the camera's stream: a new owner's tracks continue it."""
        return next_track_id(self.client, self.keys.results(camera_id))


def live_workers(client: redis.Redis, keys: FleetKeys, lease: float) -> dict[str, dict[str, Any]]:
    """Workers whose heartbeat is younger than `lease`: name -> their heartbeat hash."""
    now = time.time()
    names = [_text(n) for n in client.zrangebyscore(keys.workers, now - lease, "+inf")]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.worker(name))
    out = {}
    for name, raw in zip(names, pipe.execute()):
        if raw:
            info = {_text(k): _text(v) for k, v in raw.items()}
            if worker_record_ok(info):  # a forged heartbeat is not a peer (and never breaks the balance)
                out[name] = info
    return out


def worker_record_ok(info: dict[str, str]) -> bool:
    """Whether a worker's heartbeat hash validates (WorkerRecord)."""
    try:
        WorkerRecord.model_validate(info)
    except ValidationError:
        return False
    return True


def is_camera(spec: StreamSpec) -> bool:
    """A live source reached over the network: a camera of the book, which any process may run.
    Everything else (files, local devices) runs on the process that was given it."""
    return bool(scheme_of(spec.url)) and source_kind(spec.url, None if spec.kind == "auto" else spec.kind) == "live"


def adopt_service_streams(book: CameraBook, old_key: str, policy: SourcesSection) -> None:
    """Carry the cameras an older `segstream serve` remembered (`<prefix>service:streams`, a hash of
    StreamSpec JSON) into the camera book, once: judged by today's source policy as API input, added
    only where the id is free; local files there are not replayed (as files over the API now are).
    The old hash is renamed `<old_key>:adopted`, so nothing is read twice and nothing is lost."""
    client = book.client
    if not client.exists(old_key):
        return
    adopted, skipped = 0, []
    for raw_id, raw in client.hgetall(old_key).items():
        stream_id = _text(raw_id)
        try:
            spec = StreamSpec.model_validate(json.loads(raw))
            if not is_camera(spec):
                skipped.append(f"{stream_id} (a local file: not replayed)")
                continue
            check_source(spec.url, policy, "api")
            settings = {k: v for k, v in (("max_frames", spec.max_frames), ("gating", spec.gating)) if v}
            if book.add(spec.id, spec.url, only_new=True, kind="live", origin="api", **settings):
                adopted += 1
            else:
                skipped.append(f"{stream_id} (the id is already in the camera book)")
        except (ValueError, RecursionError, SourceRefused) as exc:  # ValidationError is a ValueError
            skipped.append(f"{stream_id[:80]} ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})")
    client.rename(old_key, f"{old_key}:adopted")
    log.warning("the cameras of an older serve (%s): %d moved into the camera book %s%s; the old hash is kept as "
                "%s:adopted", old_key, adopted, book.keys.cameras,
                f", {len(skipped)} not: {'; '.join(skipped)}" if skipped else "", old_key)
