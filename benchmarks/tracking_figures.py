"""Tracking figures on clips of the independent generator, through the whole pipeline and Redis.

Each clip is rendered by benchmarks/independent_shapes.py (code the tracker was not tuned on), run
by `segstream.commands.evaluate.evaluate_through_redis` (what `segstream eval` does: decode,
preprocess, engine, postprocess, tracking, publish into a private Redis, read back) and scored:
IDF1, MOTA and identity switches over the published instances of score >= 0.5 (motmetrics, all
clips together, identities kept apart per clip), next to the IDF1 that perfect identities would
give the same detections. The tracker's cost comes from the same runs' stage timings (busy
seconds of the tracking stage / of the inference stage, per published frame).

    .venv/bin/python benchmarks/tracking_figures.py [--seeds 201 202 203 204 205 206] [--frames 150]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segstream.pipeline.config import RunConfig
from segstream.pipeline.wire.consumer import Subscriber
from segstream.commands.evaluate import TRACKING_MIN_SCORE, stage_costs
from segstream.commands.local_redis import LocalRedis
from segstream.pipeline.run import run
from segstream.shapes.evaluate import summarize_tracking, tracking_accumulators

RENDERER = Path(__file__).with_name("independent_shapes.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[201, 202, 203, 204, 205, 206])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--keep", type=Path, default=None, help="render the clips into this folder and keep them")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="segstream-tracking-"))
    folder.mkdir(parents=True, exist_ok=True)
    accumulators, costs, engine_ms, tracking_ms = [], [], 0.0, 0.0
    with LocalRedis() as url:
        config = RunConfig()
        config.redis.url = url
        config.redis.maxlen = 1_000_000
        config.output.progress = False
        for seed in args.seeds:
            video, gt = folder / f"independent-{seed}.mp4", folder / f"independent-{seed}.json"
            if not video.exists() or not gt.exists():
                subprocess.run([sys.executable, str(RENDERER), str(video), str(gt), "--seed", str(seed),
                                "--frames", str(args.frames)], check=True, capture_output=True)
            stream_id = f"tracking-{seed}-{int(time.time() * 1000)}"
            summary = run([str(video)], config, stream_ids=[stream_id])
            entries = Subscriber(url, stream_id, prefix=config.redis.prefix, from_start=True).read_all()
            pair = tracking_accumulators(gt, entries, min_score=TRACKING_MIN_SCORE)
            if pair is None:
                raise SystemExit(f"seed {seed}: no track ids published or no identities in the ground truth")
            accumulators.append(pair)
            cost = stage_costs(summary)
            costs.append(cost["tracking_cost"])
            engine_ms += cost["engine_ms"] * summary.frames
            tracking_ms += cost["tracking_ms"] * summary.frames
            one = summarize_tracking([pair])
            print(f"seed {seed}: {summary.frames} frames, {int(one['gt_tracks'])} objects; IDF1 {one['idf1']:.3f} "
                  f"(perfect identities {one['idf1_oracle']:.3f}), MOTA {one['mota']:.3f}, {int(one['switches'])} ID switches; "
                  f"tracker {cost['tracking_ms']:.2f} ms/frame = {cost['tracking_cost']:.2%} of the engine's "
                  f"{cost['engine_ms']:.1f} ms", flush=True)
    total = summarize_tracking(accumulators)
    print(f"all {len(args.seeds)} clips (score >= {TRACKING_MIN_SCORE}): IDF1 {total['idf1']:.3f} "
          f"(perfect identities {total['idf1_oracle']:.3f}), MOTA {total['mota']:.3f}, "
          f"ID switches {int(total['switches'])} = {total['switches_per_100']:.1f} per 100 of {int(total['gt_tracks'])} "
          f"ground-truth tracks")
    print(f"tracker / engine time per frame: {tracking_ms / engine_ms:.2%} over all runs "
          f"(per run: min {min(costs):.2%}, median {statistics.median(costs):.2%}, max {max(costs):.2%})")
    if not args.keep:
        print(f"(clips rendered in {folder})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
