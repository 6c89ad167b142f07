"""`segstream eval VIDEO GT.json`: COCO mask/box AP and tracking figures of the whole pipeline, read back from Redis.

The clip goes through the same run as `segstream run` (decode, preprocess, engine, postprocess,
tracking, publish to Redis); the published entries are read back with the consumer API and scored
against the ground truth: mask and box AP with pycocotools; IDF1, MOTA and identity switches of the
track ids with motmetrics (instances of score >= 0.5, when the ground truth has a `track` per
object and tracking is on). Redis: --redis URL, or a private server started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from segstream.commands.model_flags import add_model_flags, apply_model_flags
from segstream.pipeline.config import RunConfig, load_config, override
from segstream.pipeline.wire.consumer import Subscriber
from segstream.commands.local_redis import LocalRedis
from segstream.pipeline.run import RunSummary, run


#: Tracking is scored over the instances a consumer would act on.
TRACKING_MIN_SCORE = 0.5


def stage_costs(summary: RunSummary) -> dict[str, float]:
    """Mean busy milliseconds per published frame of the engine and the tracker, from the run's stage timings.

    `tracking_cost` is the tracker's time as a fraction of the engine's (absent when tracking is off).
    """
    frames = max(summary.frames, 1)
    busy = {s.name: s.busy for s in summary.stages}
    # An overlapped engine's time is in two stages (features: its trunk, inference: the rest).
    out = {"engine_ms": 1000.0 * (busy.get("features", 0.0) + busy.get("inference", 0.0)) / frames}
    if "tracking" in busy:
        out["tracking_ms"] = 1000.0 * busy["tracking"] / frames
        out["tracking_cost"] = out["tracking_ms"] / out["engine_ms"] if out["engine_ms"] > 0 else 0.0
    return out


def evaluate_through_redis(video: str, gt_json: str, config: RunConfig) -> tuple[dict[str, float], RunSummary]:
    """Run `video` through the pipeline into config.redis.url, read it back, score it."""
    from segstream.shapes.evaluate import coco_metrics, error_breakdown, tracking_metrics

    if not Path(gt_json).is_file():
        from segstream.pipeline.config import ConfigError

        raise ConfigError(f"ground truth not found: {gt_json}")
    stream_id = f"eval-{Path(video).stem}-{int(time.time() * 1000)}"
    summary = run([video], config, stream_ids=[stream_id])
    entries = Subscriber(config.redis.url, stream_id, prefix=config.redis.prefix, from_start=True).read_all()
    metrics = coco_metrics(gt_json, entries)
    metrics.update(error_breakdown(gt_json, entries))
    tracking = tracking_metrics(gt_json, entries, min_score=TRACKING_MIN_SCORE)
    if tracking is not None:
        metrics.update({f"tracking_{k}": v for k, v in tracking.items()})
    metrics.update(stage_costs(summary))
    metrics["fps"] = summary.fps
    metrics["published"] = float(sum(1 for e in entries if not e.get("eos")))
    return metrics, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segstream eval", description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("gt", metavar="GT.json")
    parser.add_argument("--config")
    add_model_flags(parser)  # the same model/engine flags as run, serve and worker
    parser.add_argument("--redis", help="Redis URL (default: a private server for this run)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    override(config, "output.progress", False)
    # The stream must hold every frame until it is read back.
    override(config, "redis.maxlen", max(config.redis.maxlen, 1_000_000))
    apply_model_flags(config, args)
    with contextlib.ExitStack() as stack:
        url = args.redis or stack.enter_context(LocalRedis())
        override(config, "redis.url", url)
        metrics, summary = evaluate_through_redis(args.video, args.gt, config)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(report(metrics, summary, args.video))
    return 0


def report(metrics: dict[str, Any], summary: RunSummary, video: str) -> str:
    model = summary.model_source + (" (UNTRAINED PLACEHOLDER)" if summary.placeholder else "")
    return (f"{video}: {int(metrics['published'])} frames through the pipeline and Redis at {metrics['fps']:.2f} frames/s\n"
            f"model: {model}; engine: {summary.engine}\n"
            f"mask AP {metrics['mask_ap']:.3f}  mask AP50 {metrics['mask_ap50']:.3f}  mask AP75 {metrics['mask_ap75']:.3f}  "
            f"box AP {metrics['box_ap']:.3f}  box AP50 {metrics['box_ap50']:.3f}\n"
            f"errors: {metrics['found']:.1%} of {int(metrics['objects'])} objects found (mask IoU >= 0.5, any class), "
            f"{metrics['wrong_class']:.1%} of those with the wrong class; {int(metrics['background'])} confident "
            f"detections on the background; class-agnostic mask AP50 {metrics['class_agnostic_mask_ap50']:.3f}\n"
            + tracking_report(metrics))


def tracking_report(metrics: dict[str, Any]) -> str:
    """The tracking lines of the report: identities, and the tracker's cost next to the engine's."""
    if "tracking_ms" not in metrics:
        return "tracking: off (tracking.enabled: false)"
    cost = (f"tracker {metrics['tracking_ms']:.2f} ms/frame = {metrics['tracking_cost']:.1%} of the engine's "
            f"{metrics['engine_ms']:.1f} ms")
    if "tracking_idf1" not in metrics:
        return f"tracking: no identities in the ground truth (no `track` per object); {cost}"
    return (f"tracking (score >= {TRACKING_MIN_SCORE}): IDF1 {metrics['tracking_idf1']:.3f} "
            f"(perfect identities would give {metrics['tracking_idf1_oracle']:.3f})  MOTA {metrics['tracking_mota']:.3f}  "
            f"ID switches {int(metrics['tracking_switches'])} = {metrics['tracking_switches_per_100']:.1f} per 100 of "
            f"{int(metrics['tracking_gt_tracks'])} ground-truth tracks\n{cost}")


if __name__ == "__main__":
    sys.exit(main())
