"""Issue 23's leak figure: a real `segstream serve` with one RTSP camera running, and a second
stream added and removed over the HTTP API again and again. Before and after the cycles it prints
the service's resident memory, threads and open descriptors (from /proc), so per-stream state that
is never freed shows as growth. A warm-up of cycles comes first (thread pools, allocator arenas and
the decoder's first buffers grow once), so the figures compare steady states.

    .venv/bin/python benchmarks/serve_add_remove.py [--cycles 2000] [--warmup 50] [--second camera|file] [--ids new|same] [--live]

--second camera (default) adds a second RTSP camera of the same loopback server; --second file adds a
real encoded clip (300 frames) that the DELETE cuts short: cheaper a cycle, the file path's state.

--ids new (default) gives the second stream a new id every cycle (cam2-1, cam2-2, ...: cameras coming
and going over months, so per-id state that is never freed grows); --ids same re-adds `cam2`.
--live waits, in every cycle, until the second camera published a frame before removing it (slower:
the RTSP connection and the first frames each time); without it the removal follows the add's reply.
Acceptance (issue 23): RSS growth <= 5 %, threads and descriptors back to their starting counts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from serve_harness import PrivateRedis, Serve, cameras
from media import write_clip  # tests/media.py (serve_harness puts tests/ on the path)


def usage(pid: int) -> tuple[int, int, int]:
    """(resident KiB, threads, open descriptors) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"]), len(os.listdir(f"/proc/{pid}/fd"))


def descriptors(pid: int, redis_port: int) -> dict[str, int]:
    """The process's open descriptors by what they are: Redis connections (by the server's port),
    other TCP sockets (the HTTP listener and clients, the camera), pipes, files, other."""
    ports: dict[str, int] = {}  # socket inode -> remote port
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            ports[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            kind = "redis" if ports.get(target[8:-1]) == redis_port else "socket"
        elif target.startswith("pipe:"):
            kind = "pipe"
        elif target.startswith("/"):
            kind = "file"
        else:
            kind = "other"
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def settle(serve: Serve, pid: int) -> tuple[int, int, int]:
    """The usage once threads and descriptors stopped changing (a removed camera's last threads end)."""
    last = usage(pid)
    for _ in range(40):
        time.sleep(0.5)
        now = usage(pid)
        if now[1:] == last[1:]:
            return now
        last = now
    return last


def cycle(serve: Serve, url: str, live: bool, stream_id: str = "cam2") -> None:
    """POST the second stream, optionally wait for its first published frame, DELETE it."""
    status, body = serve.call("POST", "/streams", {"id": stream_id, "url": url})
    assert status == 201, body
    if live:
        deadline = time.monotonic() + 30
        while serve.call("GET", f"/streams/{stream_id}")[1]["frames_published"] == 0:
            assert time.monotonic() < deadline, f"{stream_id} published nothing within 30 s"
            time.sleep(0.05)
    status, body = serve.call("DELETE", f"/streams/{stream_id}")
    assert status == 200, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--live", action="store_true", help="wait for a published frame of cam2 in each cycle")
    parser.add_argument("--ids", choices=("new", "same"), default="new", help="a new id for the second stream each cycle")
    parser.add_argument("--second", choices=("camera", "file"), default="camera", help="what the second stream is")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--input-size", default="128x224", help="network input HxW (small: the CPU keeps up)")
    args = parser.parse_args()

    server = cameras(2, 320, 180, args.fps)
    redis = PrivateRedis()
    url = redis.start()
    config = {"redis": {"url": url, "maxlen": 1000}, "output": {"progress": False},
              "model": {"input_size": [int(v) for v in args.input_size.lower().split("x")]}}
    cam = f"rtsp://127.0.0.1:{server.port}"
    second = f"{cam}/cam2"
    if args.second == "file":
        second = str(write_clip(Path(tempfile.mkdtemp(prefix="segstream-add-remove-")) / "second.mp4", frames=300))
        config["sources"] = {"media_root": str(Path(second).parent)}  # a file over the API: under the media root
    try:
        with Serve(config) as serve:
            pid = serve.process.pid
            status, body = serve.call("POST", "/streams", {"id": "cam1", "url": f"{cam}/cam1"})
            assert status == 201, body
            deadline = time.monotonic() + 60
            while serve.call("GET", "/streams/cam1")[1]["frames_published"] == 0:
                assert time.monotonic() < deadline, "cam1 published nothing within 60 s"
                time.sleep(0.2)
            for i in range(args.warmup):
                cycle(serve, second, args.live, f"warm-{i}" if args.ids == "new" else "cam2")
            before = settle(serve, pid)
            kinds_before = descriptors(pid, redis.port)
            started = time.monotonic()
            for i in range(args.cycles):
                cycle(serve, second, args.live, f"cam2-{i}" if args.ids == "new" else "cam2")
                if (i + 1) % max(1, args.cycles // 10) == 0:
                    rss, threads, fds = usage(pid)
                    print(f"  {i + 1:5d} cycles: RSS {rss / 1024:.1f} MiB, {threads} threads, {fds} fds", flush=True)
            seconds = time.monotonic() - started
            after = settle(serve, pid)
            kinds_after = descriptors(pid, redis.port)
            published = serve.call("GET", "/streams/cam1")[1]["frames_published"]
            listed = [s["id"] for s in serve.call("GET", "/streams")[1]]
            code, _ = serve.terminate()
    finally:
        server.stop()
        redis.stop()

    growth = 100.0 * (after[0] - before[0]) / before[0]
    print(f"\nsegstream serve, cam1 running, cam2 ({args.second}) added and removed {args.cycles} times over HTTP ({args.ids} id each time) "
          f"({'each until its first published frame' if args.live else 'removed right after the add'}), "
          f"after {args.warmup} warm-up cycles; {seconds:.0f} s, {seconds / max(1, args.cycles) * 1000:.0f} ms a cycle")
    print(f"{'':12} {'RSS MiB':>9} {'threads':>8} {'fds':>5}")
    print(f"{'before':12} {before[0] / 1024:9.1f} {before[1]:8d} {before[2]:5d}")
    print(f"{'after':12} {after[0] / 1024:9.1f} {after[1]:8d} {after[2]:5d}")
    print(f"RSS growth {growth:+.2f} % (acceptance <= 5 %); threads {after[1] - before[1]:+d}, fds {after[2] - before[2]:+d} "
          f"(acceptance: back to the start); cam1 published {published} frames; listed at the end: {listed}; "
          f"SIGTERM exit {code}")
    print(f"descriptors before {kinds_before}, after {kinds_after}")
    ok = growth <= 5.0 and after[1] <= before[1] and after[2] <= before[2] and code == 0
    print("acceptance:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
