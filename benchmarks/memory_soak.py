"""Memory over a long run: resident set size sampled while a clip is processed many times over.

Runs the pipeline on the same clip `--rounds` times in one process (into a private Redis with a
short MAXLEN, as a long-running deployment would) and prints the RSS after each round. A
pipeline that leaks grows round after round; a bounded one levels off after the first.

    .venv/bin/python benchmarks/memory_soak.py [--frames 60] [--rounds 8] [--model shapes]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from segstream.pipeline.config import RunConfig
from segstream.commands.local_redis import LocalRedis
from segstream.pipeline.run import run
from segstream.pipeline.streaming import make_engine


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--model", default="shapes")
    args = parser.parse_args()
    from segstream.shapes.clip import render_clip

    folder = Path(tempfile.mkdtemp(prefix="segstream-soak-"))
    video = folder / "soak.mp4"
    render_clip(video, folder / "soak.json", seed=11, frames=args.frames)
    config = RunConfig()
    config.model.name = args.model
    config.output.progress = False
    config.redis.maxlen = 100
    engine, _ = make_engine(config)
    sizes = []
    with LocalRedis() as url:
        config.redis.url = url
        for i in range(args.rounds):
            summary = run([str(video)], config, engine=engine, stream_ids=["soak"])
            sizes.append(rss_mib())
            print(f"round {i + 1}: {summary.frames} frames, {summary.instances} instances, RSS {sizes[-1]:.0f} MiB", flush=True)
    growth = sizes[-1] - sizes[1] if len(sizes) > 2 else 0.0
    print(f"RSS growth from round 2 to round {len(sizes)}: {growth:+.1f} MiB "
          f"({growth / max(1, (len(sizes) - 2) * args.frames) * 1024:.1f} KiB per frame)")


if __name__ == "__main__":
    main()
