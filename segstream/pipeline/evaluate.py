"""`segstream eval VIDEO GT.json`: COCO mask/box AP of the whole pipeline, read back from Redis.

The clip goes through the same run as `segstream run` (decode, preprocess, engine, postprocess,
publish to Redis); the published entries are read back with the consumer API and scored with
pycocotools against the ground truth. Redis: --redis URL, or a private server started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from segstream.pipeline.config import RunConfig, load_config, override
from segstream.pipeline.consumer import Subscriber
from segstream.pipeline.redis_server import PrivateRedis
from segstream.pipeline.run import RunSummary, run


def evaluate_through_redis(video: str, gt_json: str, config: RunConfig) -> tuple[dict[str, float], RunSummary]:
    """Run `video` through the pipeline into config.redis.url, read it back, score it."""
    from segstream.shapes.evaluate import coco_metrics, error_breakdown

    if not Path(gt_json).is_file():
        from segstream.pipeline.config import ConfigError

        raise ConfigError(f"ground truth not found: {gt_json}")
    stream_id = f"eval-{Path(video).stem}-{int(time.time() * 1000)}"
    summary = run([video], config, stream_ids=[stream_id])
    entries = Subscriber(config.redis.url, stream_id, prefix=config.redis.prefix, from_start=True).read_all()
    metrics = coco_metrics(gt_json, entries)
    metrics.update(error_breakdown(gt_json, entries))
    metrics["fps"] = summary.fps
    metrics["published"] = float(sum(1 for e in entries if not e.get("eos")))
    return metrics, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segstream eval", description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("gt", metavar="GT.json")
    parser.add_argument("--config")
    parser.add_argument("--model")
    parser.add_argument("--engine", choices=("auto", "torch", "onnxruntime", "openvino", "tensorrt"))
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"))
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--redis", help="Redis URL (default: a private server for this run)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    override(config, "output.progress", False)
    # The stream must hold every frame until it is read back.
    override(config, "redis.maxlen", max(config.redis.maxlen, 1_000_000))
    for key, value in (("model.name", args.model), ("engine.kind", args.engine), ("engine.device", args.device),
                       ("engine.precision", args.precision)):
        if value is not None:
            override(config, key, value)
    with contextlib.ExitStack() as stack:
        url = args.redis or stack.enter_context(PrivateRedis())
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
            f"detections on the background; class-agnostic mask AP50 {metrics['class_agnostic_mask_ap50']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
