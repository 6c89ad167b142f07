"""Redis sizing: bytes per published frame and per camera-hour, measured on real pipeline output.

Renders a clip of the shapes domain (640x360, the bundled model's domain), runs the real pipeline
(`segstream.pipeline.run.run`, bundled shapes model, network input 288x480) into a private Redis, then
asks Redis how much memory the stream key takes (`MEMORY USAGE key SAMPLES 0`: every entry counted)
and how large the `data` JSON of each entry is. From bytes per entry it derives bytes per camera-hour
at 10 and 30 published frames/s and the memory that `redis.maxlen` / `redis.retention_seconds` bound.

    .venv/bin/python benchmarks/redis_sizing.py [--frames 60] [--input-size 288x480]
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

import redis

from segstream.pipeline.config import RunConfig
from segstream.commands.local_redis import LocalRedis
from segstream.pipeline.run import run


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--input-size", default="288x480")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    from segstream.shapes.clip import render_clip

    folder = Path(tempfile.mkdtemp(prefix="segstream-sizing-"))
    video = folder / "sizing.mp4"
    render_clip(video, folder / "sizing.json", seed=args.seed, frames=args.frames)
    config = RunConfig()
    config.model.input_size = tuple(int(v) for v in args.input_size.split("x"))
    config.output.progress = False
    config.redis.maxlen = 100_000  # keep every entry: the point is to measure them
    with LocalRedis() as url:
        config.redis.url = url
        summary = run([str(video)], config, stream_ids=["cam"])
        r = redis.Redis.from_url(url)
        key = "segstream:cam"
        entries = r.xrange(key)
        frames = [json.loads(fields[b"data"]) for _, fields in entries]
        frames = [m for m in frames if "frame" in m]
        data_bytes = [len(fields[b"data"]) for _, fields in entries if b'"frame"' in fields[b"data"]]
        memory = int(r.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0"))
        version = r.info("server")["redis_version"]
    n = len(entries)
    per_entry = memory / n
    instances = sum(len(m["instances"]) for m in frames) / len(frames)
    mean_data = sum(data_bytes) / len(data_bytes)
    header = sum(len(json.dumps({**m, "instances": []}, separators=(",", ":"))) for m in frames) / len(frames)
    print(f"date {datetime.date.today()}, redis-server {version}, model {summary.model_source}, "
          f"input {args.input_size}, clip 640x360, {len(frames)} frames + EOS")
    print(f"instances per frame: {instances:.2f}; data JSON per frame entry: mean {mean_data:.0f} B, "
          f"min {min(data_bytes)} B, max {max(data_bytes)} B"
          + (f"; frame fields {header:.0f} B + ~{(mean_data - header) / instances:.0f} B per instance" if instances else ""))
    print(f"MEMORY USAGE {key} SAMPLES 0: {memory} B for {n} entries -> {per_entry:.0f} B per entry "
          f"(Redis overhead over the JSON: {per_entry / mean_data:.2f}x)")
    for fps in (10, 30):
        hour = per_entry * fps * 3600
        print(f"{fps} fps published: {human(hour)} per camera-hour, {human(hour * 24)} per camera-day")
    for maxlen in (10_000, 100_000):
        print(f"redis.maxlen {maxlen}: at most ~{human(maxlen * per_entry)} per stream "
              f"(= {maxlen / 10 / 60:.0f} min at 10 fps, {maxlen / 30 / 60:.1f} min at 30 fps)")
    for seconds in (60, 600, 3600):
        print(f"redis.retention_seconds {seconds}: ~{human(seconds * 10 * per_entry)} per stream at 10 fps, "
              f"~{human(seconds * 30 * per_entry)} at 30 fps")


if __name__ == "__main__":
    main()
