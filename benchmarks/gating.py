"""Motion gating figures (issue 25), gating off and on in the same run, on the same engine.

1. Files: a monitoring clip (segstream.shapes.monitoring: one scene, sensor noise, objects still
   most of the time, moving in short bursts) and a clip where everything moves all the time
   (segstream.shapes.clip). Each goes through the whole pipeline into a private Redis with
   gating off and on (`gating.mode`, a file gated as a camera would be); reported: process CPU
   seconds per frame (time.process_time around the run: every thread, the model loaded once
   before and warmed up, so startup is removed), frames the model ran on, and mask AP of the
   published entries (read back from Redis) against the clip's ground truth.
2. Cameras: N paced 10 fps monitoring cameras through one pipeline (each decodes the monitoring
   clip in a loop with PyAV on its own thread and delivers frames on a 10 fps clock as a live
   source, starting at its own point of the clip so the bursts do not line up; camera lanes drop
   the oldest frame when the engine falls behind, as for RTSP cameras). N grows until a camera
   drops a frame within `--seconds` (after a 3 s settling period); reported: the most cameras
   held without drops, off and on.

    .venv/bin/python benchmarks/gating.py [--frames 300] [--seconds 20] [--skip-files] [--skip-cameras]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import av

from segstream.pipeline.config import RunConfig
from segstream.pipeline.wire.consumer import Subscriber
from segstream.pipeline.messages import Frame
from segstream.commands.local_redis import LocalRedis
from segstream.pipeline.run import run
from segstream.pipeline.streaming import StreamingPipeline, make_engine
from segstream.pipeline.streams import SourceCounters, StreamState
from segstream.shapes.clip import render_clip
from segstream.shapes.evaluate import coco_metrics
from segstream.shapes.monitoring import render_monitoring_clip

FPS = 10
SETTLE = 3.0


def base_config(url: str | None) -> RunConfig:
    config = RunConfig()
    config.redis.url = url
    config.redis.maxlen = 1_000_000
    config.output.progress = False
    return config


def file_figures(video: Path, gt: Path, mode: str, engine, url: str) -> dict:
    config = base_config(url)
    config.gating.mode = mode
    stream_id = f"gating-{video.stem}-{mode}-{int(time.time() * 1000)}"
    cpu, wall = time.process_time(), time.monotonic()
    summary = run([str(video)], config, stream_ids=[stream_id], engine=engine)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    entries = Subscriber(url, stream_id, prefix=config.redis.prefix, from_start=True).read_all()
    frames = [e for e in entries if "frame" in e]
    state = summary.streams[stream_id]
    return {"frames": len(frames), "inferred": sum(1 for e in frames if "inferred" not in e),
            "cpu_per_frame": cpu / max(len(frames), 1), "wall": wall,
            "mask_ap": coco_metrics(str(gt), entries)["mask_ap"], "gated_state": state.gated}


class PacedClipCamera:
    """A live source for the benchmark: the clip decoded in a loop, frames delivered at `fps`
    (capture time = delivery time), from frame `offset` on. Duck-types pipeline Sources."""

    live = True

    def __init__(self, path: Path, stream_id: str, offset: int, fps: float = FPS) -> None:
        self.path, self.offset, self.period = path, offset, 1.0 / fps
        self.name = self.stream_id = stream_id
        self.state = StreamState(stream_id, str(path), "live")
        self.counters = SourceCounters()

    def check(self) -> None:
        pass

    def _decoded(self) -> Iterator:
        skip = self.offset
        while True:
            with av.open(str(self.path)) as container:
                for frame in container.decode(video=0):
                    if skip:
                        skip -= 1
                        continue
                    yield frame.to_ndarray(format="rgb24")

    def items(self, stopping: threading.Event) -> Iterator[Frame]:
        self.state.set_state("live")
        start = time.monotonic()
        for index, image in enumerate(self._decoded()):
            due = start + index * self.period
            if stopping.wait(max(0.0, due - time.monotonic())):
                return
            self.state.frame_decoded()
            yield Frame(self.stream_id, index, None, time.time(), image, live=True)


def cameras_held(video: Path, count: int, mode: str, engine, seconds: float, clip_frames: int) -> tuple[int, float, float]:
    """Run `count` paced cameras for SETTLE + seconds; (frames dropped after settling, inferred
    share, process CPU seconds per published frame)."""
    config = base_config(None)
    config.gating.mode = mode
    pipeline = StreamingPipeline(config, engine, keep_alive=True)
    cams = [PacedClipCamera(video, f"cam{i}", (i * clip_frames) // count) for i in range(count)]
    pipeline.start()
    try:
        for cam in cams:
            pipeline.add_source(cam)
        time.sleep(SETTLE)
        before = sum(c.state.dropped_total for c in cams)
        inferred0 = sum(c.state.inferred for c in cams)
        seen0 = sum(c.state.inferred + c.state.gated for c in cams)
        published0 = sum(c.state.published for c in cams)
        cpu = time.process_time()
        time.sleep(seconds)
        cpu = time.process_time() - cpu
        dropped = sum(c.state.dropped_total for c in cams) - before
        inferred = sum(c.state.inferred for c in cams) - inferred0
        seen = sum(c.state.inferred + c.state.gated for c in cams) - seen0
        published = sum(c.state.published for c in cams) - published0
    finally:
        pipeline.shutdown(10)
        pipeline.close()
    return dropped, inferred / max(seen, 1), cpu / max(published, 1)


def most_cameras(video: Path, mode: str, engine, seconds: float, clip_frames: int, start: int, limit: int) -> tuple[int, list]:
    held, trials = 0, []
    for count in range(start, limit + 1):
        load = os.getloadavg()[0]
        dropped, share, cpu = cameras_held(video, count, mode, engine, seconds, clip_frames)
        trials.append({"cameras": count, "dropped": dropped, "inferred_share": round(share, 3),
                       "cpu_per_frame": round(cpu, 4), "load_average": load})
        print(f"  {mode}: {count} cameras -> {dropped} dropped, model on {share:.0%} of frames, "
              f"{cpu:.4f} CPU s per published frame (load average {load:.1f} on {os.cpu_count()} cores)", flush=True)
        if dropped:
            break
        held = count
    return held, trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per clip")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds each camera count must hold")
    parser.add_argument("--max-cameras", type=int, default=24)
    parser.add_argument("--skip-cameras", action="store_true")
    parser.add_argument("--skip-files", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="segstream-gating-"))
    monitoring = (folder / "monitoring.mp4", folder / "monitoring.json")
    moving = (folder / "moving.mp4", folder / "moving.json")
    coco = render_monitoring_clip(*monitoring, seed=args.seed, frames=args.frames, fps=FPS)
    render_clip(*moving, seed=args.seed, frames=args.frames, fps=FPS, scene_frames=(100, 150))
    motion = sum(coco["info"]["moving"]) / len(coco["info"]["moving"])
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"clips: {args.frames} frames each at 640x360, {FPS} fps; monitoring clip: {motion:.0%} of frames with motion")

    engine, _ = make_engine(base_config(None))  # loaded once: startup is not in any figure
    figures: dict = {"motion_share": motion}
    if not args.skip_files:
        with LocalRedis() as url:
            file_figures(*moving, "off", engine, url)  # warm-up: caches, allocator, OpenVINO's first calls
            for name, (video, gt) in (("monitoring", monitoring), ("moving", moving)):
                runs = {mode: file_figures(video, gt, mode, engine, url) for mode in ("off", "on")}
                off, on = runs["off"], runs["on"]
                ratio = on["cpu_per_frame"] / off["cpu_per_frame"]
                figures[name] = {**runs, "cpu_ratio": ratio, "ap_delta": on["mask_ap"] - off["mask_ap"]}
                print(f"{name}: CPU s/frame off {off['cpu_per_frame']:.4f} on {on['cpu_per_frame']:.4f} "
                      f"(on/off {ratio:.2f}); model ran on {off['inferred']}/{off['frames']} vs "
                      f"{on['inferred']}/{on['frames']} frames; mask AP off {off['mask_ap']:.4f} on "
                      f"{on['mask_ap']:.4f} (on - off {on['mask_ap'] - off['mask_ap']:+.4f})", flush=True)
    if not args.skip_cameras:
        held_off, trials_off = most_cameras(monitoring[0], "off", engine, args.seconds, args.frames, 1, args.max_cameras)
        held_on, trials_on = most_cameras(monitoring[0], "on", engine, args.seconds, args.frames, max(1, held_off),
                                          args.max_cameras)
        # What the CPU could hold if this process had every core (a bound, not a measurement of
        # drops): cores / (10 fps x CPU seconds per published frame), from the last trial of each mode.
        budget = {mode: os.cpu_count() / (FPS * trials[-1]["cpu_per_frame"])
                  for mode, trials in (("off", trials_off), ("on", trials_on))}
        figures["cameras"] = {"off": held_off, "on": held_on, "trials": trials_off + trials_on,
                              "cpu_bound_off": budget["off"], "cpu_bound_on": budget["on"]}
        ratio = held_on / held_off if held_off else float("inf")
        print(f"10 fps monitoring cameras held without drops for {args.seconds:.0f} s: off {held_off}, on {held_on} "
              f"(on/off {ratio:.2f}); CPU bound ({os.cpu_count()} cores / (10 fps x CPU s per frame)): "
              f"off {budget['off']:.1f}, on {budget['on']:.1f} (on/off {budget['on'] / budget['off']:.2f})")
    if hasattr(engine, "close"):
        engine.close()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
