"""`segstream status`: the fleet at a glance, read from Redis only (workers' heartbeat hashes,
job records, the camera book and its leases), so it works from any machine and never touches a
worker. Every `segstream serve` is a worker here too; its `GET /streams` reads the same records."""

from __future__ import annotations

import collections
import json
import time
from typing import Any

import redis

from segstream.fleet.cameras import CameraBook, worker_record_ok
from segstream.fleet.jobs import JobQueue, _text
from segstream.fleet.keys import FleetKeys


def gather(client: redis.Redis, keys: FleetKeys, lease: float = 10.0) -> dict[str, Any]:
    """{"workers": [...], "jobs": {"counts": {...}, "list": [...]}, "cameras": [...]} (JSON-able)."""
    now = time.time()
    workers = []
    seen = client.zrange(keys.workers, 0, -1, withscores=True)
    pipe = client.pipeline(transaction=False)
    for name, _ in seen:
        pipe.hgetall(keys.worker(_text(name)))
    streams_by_id: dict[str, dict[str, Any]] = {}
    for (name, last), raw in zip(seen, pipe.execute()):
        info = {_text(k): _text(v) for k, v in raw.items()}
        if info and not worker_record_ok(info):
            info = {}  # a heartbeat hash that does not validate: listed as a worker without a heartbeat
        alive = bool(info) and now - last < lease
        entry = {"name": _text(name), "alive": alive, "last_heartbeat": round(now - last, 1)}
        if info:
            streams = json.loads(info.get("streams", "[]"))
            for s in streams:
                streams_by_id[s["id"]] = {**s, "worker": entry["name"]}
            entry.update(capacity=int(info["capacity"]), load=int(info["load"]), fps=float(info["fps"]),
                         jobs=int(info["jobs"]), cameras=int(info["cameras"]),
                         jobs_done=int(info.get("jobs_done", 0)), jobs_failed=int(info.get("jobs_failed", 0)),
                         stopping=bool(int(info.get("stopping", 0))), redis_up=bool(int(info.get("redis_up", 1))))
        workers.append(entry)
    alive = {w["name"] for w in workers if w["alive"]}
    records = JobQueue(client, keys).records()
    counts = collections.Counter(r.get("state", "?") for r in records)
    jobs = []
    for r in records:
        stream = streams_by_id.get(r["stream_id"]) if r.get("state") == "running" else None
        jobs.append({"id": r["id"], "stream": r["stream_id"], "source": _redacted(r["source"]), "state": r.get("state"),
                     "worker": r.get("worker") or None, "attempts": int(r.get("attempts", 0)),
                     "worker_alive": (r.get("worker") in alive) if r.get("state") == "running" else None,
                     "frames": int(r["frames"]) if r.get("frames") else (stream or {}).get("published"),
                     "reason": r.get("reason") or None})
    book = CameraBook(client, keys, lease)
    wanted = book.wanted()
    owners = book.owners(sorted(wanted))
    cameras = []
    for camera_id in sorted(wanted):
        stream = streams_by_id.get(camera_id, {})
        owner = owners[camera_id]
        dropped = stream.get("dropped")
        # "pending": wanted, nobody runs it yet (as GET /streams says; "connecting" once owned, before its first record)
        cameras.append({"id": camera_id, "url": _redacted(wanted[camera_id].url), "owner": owner,
                        "state": (stream.get("state") or "connecting") if owner else "pending", "fps": stream.get("fps"),
                        "lag": stream.get("lag"),
                        "dropped": sum(dropped.values()) if isinstance(dropped, dict) else dropped})
    return {"workers": workers,
            "jobs": {"counts": {s: counts.get(s, 0) for s in ("waiting", "running", "done", "failed")}, "list": jobs},
            "cameras": cameras}


def _redacted(url: str) -> str:
    from segstream.pipeline.sources.locations import redact

    return redact(url)


def render(status: dict[str, Any], limit: int = 20) -> str:
    """The text `segstream status` prints."""
    lines = []
    workers = status["workers"]
    alive = [w for w in workers if w["alive"]]
    lines.append(f"workers: {len(alive)} alive" + (f", {len(workers) - len(alive)} silent" if len(workers) > len(alive) else ""))
    for w in workers:
        if "capacity" in w:
            lines.append(f"  {w['name']:<24} {'alive' if w['alive'] else 'silent':<6} load {w['load']}/{w['capacity']}  "
                         f"{w['fps']:.1f} frames/s  jobs {w['jobs']}  cameras {w['cameras']}  "
                         f"done {w['jobs_done']}  failed {w['jobs_failed']}" + ("  stopping" if w.get("stopping") else ""))
        else:
            lines.append(f"  {w['name']:<24} silent for {w['last_heartbeat']:.0f} s")
    c = status["jobs"]["counts"]
    lines.append(f"jobs: {c['waiting']} waiting, {c['running']} running, {c['done']} done, {c['failed']} failed")
    order = {"running": 0, "waiting": 1, "failed": 2, "done": 3}
    for j in sorted(status["jobs"]["list"], key=lambda j: order.get(j["state"], 4))[:limit]:
        extra = f"  on {j['worker']}" if j["state"] == "running" and j["worker"] else ""
        if j["state"] == "running" and not j.get("worker_alive"):
            extra += " (silent: another worker resumes it after the lease)"
        if j["frames"] is not None:
            extra += f"  {j['frames']} frames"
        if j["reason"]:
            extra += f"  reason: {j['reason']}"
        lines.append(f"  {j['id']}  {j['stream']:<20} {j['state']:<8}{extra}")
    lines.append(f"cameras: {len(status['cameras'])}")
    for cam in status["cameras"]:
        fps = "-" if cam["fps"] is None else f"{cam['fps']:.1f} frames/s"
        lag = "-" if cam["lag"] is None else f"lag {cam['lag']:.2f} s"
        lines.append(f"  {cam['id']:<20} {cam['state'] or '?':<12} owner {cam['owner'] or '-':<24} {fps}  {lag}")
    return "\n".join(lines)
