"""Soak: a long camera run through every fault at once, with resources sampled as it goes.

Four real RTSP cameras (Debian's gst-rtsp-server, 320x180 at 10 fps) feed one pipeline with the
bundled model into a private Redis (append-only, as a deployment would run it). One camera flaps:
its server is killed every `--flap-every` s and restarted `--flap-down` s later. Redis is
SIGKILLed every `--redis-every` s and restarted `--redis-down` s later. At the end it prints:
- each camera restart's delay to the camera's next live frame, and each Redis outage;
- frames the cameras sent (server frame rate x time up) against frames decoded, published,
  dropped (counted, by reason) and lost (decoded but neither published nor counted);
- RSS, threads and open file descriptors at start, at minute 5 and at the end;
- p50/p99 capture -> publish latency over every published frame.

    .venv/bin/python benchmarks/soak.py --minutes 30          # the acceptance run (docs/live.md)
    .venv/bin/python benchmarks/soak.py --minutes 3 --flap-every 30 --redis-every 60   # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import RtspServer  # noqa: E402

from segstream.pipeline.config import RunConfig  # noqa: E402
from redis_server import PrivateRedis, free_port  # noqa: E402
from segstream.pipeline.stream_spec import StreamSpec  # noqa: E402
from segstream.pipeline.streaming import StreamingPipeline  # noqa: E402

FPS = 10


def resources() -> dict[str, float]:
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {"rss_mib": rss, "threads": threading.active_count(), "fds": len(os.listdir("/proc/self/fd"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--flap-every", type=float, default=60)
    parser.add_argument("--flap-down", type=float, default=10)
    parser.add_argument("--redis-every", type=float, default=300)
    parser.add_argument("--redis-down", type=float, default=5)
    parser.add_argument("--model", default="shapes")
    args = parser.parse_args()

    redis_server = PrivateRedis(appendonly=True)
    config = RunConfig()
    config.model.name = args.model
    config.redis.url = redis_server.start()
    config.redis.maxlen = 2000
    config.output.progress = False
    ports = [free_port() for _ in range(args.cameras)]
    servers = [RtspServer(width=320, height=180, fps=FPS, port=port).start() for port in ports]
    up_seconds = [0.0] * args.cameras
    up_since = [time.monotonic()] * args.cameras
    pipeline = StreamingPipeline(config)
    latencies: list[float] = []
    landed = pipeline.redis.on_published

    def record(stream_id: str, message: dict) -> None:
        landed(stream_id, message)
        if "frame" in message:
            latencies.append(time.time() - message["time"])

    pipeline.redis.on_published = record
    live_at: dict[str, list[float]] = {f"cam{i}": [] for i in range(args.cameras)}
    pipeline.start()
    for i, server in enumerate(servers):
        state = pipeline.add_stream(StreamSpec(id=f"cam{i}", url=server.url))
        state.on_change(lambda s: live_at[s.stream_id].append(time.monotonic()) if s.state == "live" else None)
    print(f"soak: {args.cameras} cameras at {FPS} fps, {args.minutes:g} min, cam0 flaps every {args.flap_every:g} s "
          f"({args.flap_down:g} s down), Redis killed every {args.redis_every:g} s ({args.redis_down:g} s down)", flush=True)
    time.sleep(5)
    start, marks = time.monotonic(), {"start": resources()}
    print(f"  start: {marks['start']}", flush=True)
    end = start + args.minutes * 60
    next_flap, next_redis = start + args.flap_every, start + args.redis_every
    flaps: list[float] = []
    outages: list[tuple[float, float]] = []
    while time.monotonic() < end:
        now = time.monotonic()
        if "minute5" not in marks and now - start >= 300:
            marks["minute5"] = resources()
            print(f"  minute 5: {marks['minute5']}", flush=True)
        if now >= next_flap:
            next_flap += args.flap_every
            servers[0].stop()
            up_seconds[0] += time.monotonic() - up_since[0]
            time.sleep(args.flap_down)
            servers[0] = RtspServer(width=320, height=180, fps=FPS, port=ports[0]).start()
            up_since[0] = restarted = time.monotonic()
            before = len(live_at["cam0"])
            while len(live_at["cam0"]) == before and time.monotonic() - restarted < 60:
                time.sleep(0.05)
            delay = live_at["cam0"][-1] - restarted if len(live_at["cam0"]) > before else float("inf")
            flaps.append(delay)
            print(f"  {(time.monotonic() - start) / 60:5.1f} min: cam0 restarted, live again after {delay:.2f} s", flush=True)
        if now >= next_redis:
            next_redis += args.redis_every
            redis_server.kill()
            killed = time.monotonic()
            time.sleep(args.redis_down)
            redis_server.restart()
            while not pipeline.redis_up and time.monotonic() - killed < 120:
                time.sleep(0.05)
            outages.append((args.redis_down, time.monotonic() - killed))
            print(f"  {(time.monotonic() - start) / 60:5.1f} min: Redis killed, back and publishing after "
                  f"{outages[-1][1]:.2f} s", flush=True)
        time.sleep(0.2)
    marks["end"] = resources()
    for i in range(args.cameras):
        up_seconds[i] += time.monotonic() - up_since[i]
    pipeline.shutdown()
    pipeline.close()
    snapshots = {s["id"]: s for s in pipeline.registry.snapshot()}  # after the drain: nothing in flight
    for server in servers:
        server.stop()
    redis_server.stop()

    print(f"\nsoak over {args.minutes:g} min; ended {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"cam0 restarts: {len(flaps)}, delay to the next live frame: min {min(flaps, default=0):.2f} s, "
          f"max {max(flaps, default=0):.2f} s, mean {statistics.mean(flaps) if flaps else 0:.2f} s")
    print(f"Redis outages: {len(outages)}, back and publishing after: "
          + ", ".join(f"{took:.1f} s" for _, took in outages))
    print("stream  sent(est)  decoded  published  dropped(queue/outbox)  lost  reconnects")
    for i in range(args.cameras):
        s = snapshots[f"cam{i}"]
        lost = s["frames_decoded"] - s["frames_published"] - sum(s["dropped"].values())
        print(f"cam{i}   {up_seconds[i] * FPS:9.0f}  {s['frames_decoded']:7d}  {s['frames_published']:9d}  "
              f"{s['dropped']['queue']:>12d}/{s['dropped']['outbox']:<8d}  {lost:4d}  {s['reconnects']:10d}")
    ordered = sorted(latencies)
    print(f"capture->publish latency over {len(ordered)} frames: p50 {ordered[len(ordered) // 2]:.3f} s, "
          f"p99 {ordered[int(0.99 * len(ordered))]:.3f} s")
    for name, sample in marks.items():
        print(f"{name:9s} RSS {sample['rss_mib']:.0f} MiB, threads {sample['threads']}, open fds {sample['fds']}")
    if "minute5" in marks:
        growth = marks["end"]["rss_mib"] / marks["minute5"]["rss_mib"] - 1
        print(f"RSS growth from minute 5 to the end: {100 * growth:+.1f} % (floor: <= 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
