"""`make demo`: the main job end to end, offline.

A private Redis server, a demo clip of the shapes domain rendered on the spot (with its ground
truth), the bundled model segmenting it through the full pipeline into Redis, a subscriber
printing each frame as it arrives (with its track ids), and a closing summary (frames, instances,
frames/s, mask AP and IDF1 against the ground truth, where the annotated video is).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Sequence

from segstream.commands.lifecycle import print_summary
from segstream.pipeline.config import RunConfig
from segstream.pipeline.wire.consumer import Subscriber
from segstream.commands.local_redis import LocalRedis
from segstream.pipeline.run import run
from segstream.pipeline.wire.entries import describe

STREAM = "demo"


def render_demo_clip(folder: Path, frames: int, seed: int) -> tuple[Path, Path]:
    from segstream.shapes.clip import render_clip

    video, gt = folder / "demo.mp4", folder / "demo.gt.json"
    if not (video.exists() and gt.exists()):
        print(f"rendering the demo clip ({frames} frames of the shapes domain) ...", flush=True)
        render_clip(video, gt, seed=seed, frames=frames)
    return video, gt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segstream demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo", help="folder for the clip and the annotated video")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--model", default="shapes")
    args = parser.parse_args(argv)

    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    video, gt = render_demo_clip(folder, args.frames, args.seed)
    annotated = folder / "annotated.mp4"
    with LocalRedis() as url:
        print(f"private Redis at {url}; publishing to stream segstream:{STREAM}", flush=True)
        subscriber = Subscriber(url, STREAM, from_start=True, block_ms=120_000)
        received: list[dict] = []

        def consume() -> None:
            for message in subscriber:
                received.append(message)
                print(f"  subscriber: {describe(message)}", flush=True)
                if message.get("eos"):
                    return

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        config = RunConfig()
        config.model.name = args.model
        config.redis.url = url
        config.redis.maxlen = 100_000
        config.output.video = str(annotated)
        config.output.progress = False
        summary = run([str(video)], config, stream_ids=[STREAM])
        reader.join(60)
        from segstream.shapes.evaluate import coco_metrics, tracking_metrics

        metrics = coco_metrics(gt, received)
        identities = tracking_metrics(gt, received)
    print("\n=== segstream demo summary ===")
    print_summary(summary, out=sys.stdout)
    print(f"subscriber received {sum(1 for m in received if not m.get('eos'))} frames"
          f"{' and the end-of-stream entry' if received and received[-1].get('eos') else ''}")
    print(f"accuracy against the clip's ground truth: mask AP {metrics['mask_ap']:.3f}, mask AP50 "
          f"{metrics['mask_ap50']:.3f}, box AP {metrics['box_ap']:.3f}")
    if identities is not None:
        print(f"track ids against the clip's identities (score >= 0.5): IDF1 {identities['idf1']:.3f}, "
              f"{int(identities['switches'])} ID switches over {int(identities['gt_tracks'])} objects")
    if summary.placeholder:
        print("NOTE: the bundled model is an UNTRAINED PLACEHOLDER; its detections are meaningless.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
