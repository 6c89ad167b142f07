"""A worker's heartbeat: its record in Redis (`<p>fleet:worker:<name>`, WorkerRecord), written every
`fleet.heartbeat` seconds together with the renewal of every claim and lease it holds, and what the
records of the live workers say about the streams they run.

The record's `streams` is a JSON list with, per stream, what `GET /streams` shows for it
(StreamState.snapshot(): id, url (redacted), kind, state, counters, `error`, latency) plus `fps`
(frames/s out), `published` and `lag` (seconds since its newest frame). So any process that reads
Redis (`GET /streams` of any serve, `segstream status`) lists every stream of the fleet with the
worker running it, as fresh as one heartbeat.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Iterable

import redis

from segstream.fleet.cameras import worker_record_ok
from segstream.fleet.jobs import _text
from segstream.fleet.keys import FleetKeys

#: A worker's record forgets workers silent for this long (seconds) from the workers' index.
FORGET_AFTER = 3600


def stream_entries(states: Iterable[Any]) -> list[dict[str, Any]]:
    """What a heartbeat record lists for each of these StreamStates (JSON-able)."""
    out = []
    now = time.time()
    for state in states:
        snap = state.snapshot()
        lag = None if state.last_frame_time is None else round(now - state.last_frame_time, 3)
        out.append({**snap, "fps": snap["fps_out"], "published": snap["frames_published"], "lag": lag})
    return out


def write_record(client: redis.Redis, keys: FleetKeys, name: str, record: dict[str, Any], lease: float) -> None:
    """The record (values as strings; lists and dicts as JSON), expiring after the lease, and the
    worker's place in the index of workers."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    key = keys.worker(name)
    pipe.hset(key, mapping={k: (v if isinstance(v, (str, int, float)) else json.dumps(v)) for k, v in record.items()})
    pipe.pexpire(key, int(lease * 1000))
    pipe.zadd(keys.workers, {name: now})
    pipe.zremrangebyscore(keys.workers, "-inf", now - FORGET_AFTER)
    pipe.execute()


def erase_record(client: redis.Redis, keys: FleetKeys, name: str) -> None:
    client.delete(keys.worker(name))
    client.zrem(keys.workers, name)


def identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fleet_streams(client: redis.Redis, keys: FleetKeys, lease: float, skip: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """worker name -> the streams its record lists, for every worker heard from within `lease`
    seconds (whose record validates), but `skip` (the caller, which knows its own streams fresh)."""
    now = time.time()
    names = [_text(n) for n in client.zrangebyscore(keys.workers, now - lease, "+inf")]
    names = [n for n in names if n != skip]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.worker(name))
    out: dict[str, list[dict[str, Any]]] = {}
    for name, raw in zip(names, pipe.execute()):
        info = {_text(k): _text(v) for k, v in raw.items()}
        if info and worker_record_ok(info):
            out[name] = json.loads(info.get("streams", "[]"))
    return out
