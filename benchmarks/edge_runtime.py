"""The edge runtime's figures (issue 22, item 6, pipeline side): the torch-free path against
today's path, in one run of this script.

    python benchmarks/edge_runtime.py [--artifact DIR] [--frames 30] [--fps-frames 150] [--cameras 4]

Two paths, each a `segstream run` of its own process through a private redis-server:
  torch-free: the artifact directory (`segstream export openvino`) on the torch-free OpenVINO
              engine (engines/openvino_runtime.py); numpy preprocess and paste, the C RLE.
  today:      the bundled shapes model with `--engine openvino` on the torch install (OpenVINO
              runs the trunk and heads, torch the glue, resize and paste).
Both run the same sources with the same config; the process is this script's `child` mode (the
same `run()` that `segstream run` calls; the torch-free path opens its engine from `--model DIR`
as `segstream run` does, today's is opened by name: OpenVinoEngine over the torch model, which
`--engine openvino` no longer picks for the bundled model), so the figures include Python's start,
the imports, the model's load, decoding, Redis.

Printed, per path:
  - peak RSS of the process and its children (sampled every 10 ms from /proc), of a one-file run
    (640x360, --frames) and of a run of --cameras RTSP loopback cameras (tests/rtsp_server.py),
    each the worse of a cold run (empty SEGSTREAM_CACHE) and a warm one (the same cache again);
  - process start -> first frame entry on Redis, cold and warm (one-file run);
  - frames/s of a --fps-frames clip, warm, the two paths alternated --fps-runs times, best of each
    (the best, since on a shared machine other work only ever slows a run down);
and the ratios torch-free / today. Cold runs compile what the cache would hold (OpenVINO's
compiled blobs); the CPU kernels' library is built at install time, never at run time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
PATHS = ("torch-free", "today")


# -- the child: one run, as `segstream run` does it ------------------------------------------------
def child(path: str, artifact: str, redis_url: str, sources: list[str], max_frames: int | None) -> None:
    from segstream.pipeline.config import parse_config
    from segstream.pipeline.run import run

    raw: dict = {"redis": {"url": redis_url}, "output": {"progress": False}}
    if max_frames:
        raw["source"] = {"max_frames": max_frames}
    engine = None
    if path == "torch-free":  # as `segstream run --model DIR` opens it (engines/factory.py)
        raw["model"] = {"name": artifact}
    else:  # today's engine by name: `--engine openvino` on the shapes model now picks the artifact
        from segstream.engines.factory import open_engine
        from segstream.engines.models import load_model

        engine = open_engine("openvino", load_model("shapes", None, None, False), "cpu", 1)
    raw["engine"] = {"batch_size": 1}
    config = parse_config(raw)
    ids = [f"s{i}" for i in range(len(sources))]
    summary = run(sources, config, stream_ids=ids, engine=engine)
    if engine is not None:
        engine.close()
    print(json.dumps({"frames": summary.frames, "elapsed": summary.elapsed, "fps": summary.fps,
                      "engine": summary.engine, "torch": "torch" in sys.modules}), flush=True)


# -- the parent: launch, sample, time --------------------------------------------------------------
def tree_rss_kib(pid: int) -> int:
    """RSS of `pid` and all its descendants, KiB (0 once it is gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def launch(path: str, artifact: str, redis, cache: Path, sources: list[str], max_frames: int | None,
           first_key: str | None) -> dict:
    """One child run: its report plus peak_rss_mib and first_frame_s (None for cameras)."""
    client = redis.client()
    client.flushall()
    env = {**os.environ, "SEGSTREAM_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "child", path, "--artifact", artifact, "--redis", redis.url,
               *(["--max-frames", str(max_frames)] if max_frames else []), *sources]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, first = 0, None
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, first
        while not done.is_set():
            peak = max(peak, tree_rss_kib(process.pid))
            if first is None and first_key is not None and client.exists(first_key):
                entry = client.xrange(first_key, count=1)
                if entry and b'"frame"' in entry[0][1][b"data"]:
                    first = time.monotonic() - started
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate(timeout=900)
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{path} run failed ({process.returncode}): {err[-1500:]}")
    report = json.loads(out.strip().splitlines()[-1])
    report.update(peak_rss_mib=peak / 1024, first_frame_s=first)
    return report


def paste_figures(repeats: int = 5) -> tuple[float, float]:
    """ms per 1280x720 frame of 20 instances: today's torch paste + RLE, and the numpy paste + RLE."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from segstream.pipeline.stages.postprocess import paste_regions
    from segstream.pipeline.wire.rle import encode_region

    def torch_paste(masks, boxes, height, width, threshold):  # today's paste_regions (before issue 22)
        m = masks.shape[-1]
        padded = F.pad(masks, (1, 1, 1, 1))
        grow = (m + 2) / m
        half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * grow
        half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * grow
        cx, cy = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
        grown = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).to(torch.int64).tolist()
        out = []
        for i, (bx0, by0, bx1, by1) in enumerate(grown):
            w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
            x0, x1, y0, y1 = max(bx0, 0), min(bx1 + 1, width), max(by0, 0), min(by1 + 1, height)
            resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            out.append(((resized[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0] > threshold).numpy(), (x0, y0, x1, y1)))
        return out

    torch.set_num_threads(1)  # the postprocess stage is one thread beside the engine's
    g = torch.Generator().manual_seed(0)
    height, width, k = 720, 1280, 20
    xy = torch.rand((k, 2), generator=g) * torch.tensor([900.0, 420.0])
    boxes = torch.cat([xy, xy + 40 + torch.rand((k, 2), generator=g) * 300], 1)
    masks = torch.rand((k, 28, 28), generator=g)
    boxes_np, masks_np = boxes.numpy(), masks.numpy()

    def timed(paste, a, b) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for region, (x0, y0, _, _) in paste(a, b, height, width, 0.5):
                encode_region(region, x0, y0, height, width)
            best = min(best, time.perf_counter() - t)
        return best * 1000

    timed(torch_paste, masks, boxes), timed(paste_regions, masks_np, boxes_np)  # warm both up
    today, ours = [], []
    for _ in range(3):  # alternated, best of each
        today.append(timed(torch_paste, masks, boxes))
        ours.append(timed(paste_regions, masks_np, boxes_np))
    return min(today), min(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", help="artifact directory (default: exported from the bundled model into a temp dir)")
    parser.add_argument("--frames", type=int, default=30, help="frames of the one-file clip (640x360)")
    parser.add_argument("--fps-frames", type=int, default=100, help="frames of the clip the frames/s are measured on")
    parser.add_argument("--fps-runs", type=int, default=4, help="runs of each path, alternated (best counts)")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--camera-frames", type=int, default=60, help="frames each camera runs for")
    args = parser.parse_args()

    from media import write_shapes_clip
    from redis_server import PrivateRedis
    from servers import RtspServer

    work = Path(tempfile.mkdtemp(prefix="edge-runtime-"))
    artifact = args.artifact
    if artifact is None:
        artifact = str(work / "artifact")
        subprocess.run([sys.executable, "-m", "segstream.commands.main", "export", "openvino", "-o", artifact],
                       check=True, env={**os.environ, "PYTHONPATH": str(ROOT), "SEGSTREAM_CACHE": str(work / "export-cache")},
                       stdout=subprocess.DEVNULL)
    clip = str(write_shapes_clip(work / "clip.mp4", frames=args.frames, width=640, height=360))
    long_clip = str(write_shapes_clip(work / "long.mp4", frames=args.fps_frames, width=640, height=360, seed=11))
    redis = PrivateRedis()
    redis.start()
    cameras = RtspServer(width=640, height=360, fps=15)
    cameras.args += ["--mounts", str(args.cameras - 1)]
    cameras.start()
    camera_urls = [cameras.url] + [f"{cameras.url}{i}" for i in range(1, args.cameras)]
    results: dict[str, dict] = {}
    try:
        for path in PATHS:
            cache = work / f"cache-{path}"
            r: dict = {}
            for state in ("cold", "warm"):  # (the CPU kernels come prebuilt with the install: never in the cache)
                one = launch(path, artifact, redis, cache, [clip], None, "segstream:s0")
                if one["torch"] != (path == "today"):
                    raise SystemExit(f"{path}: torch imported = {one['torch']}")
                r[f"file_rss_{state}"], r[f"first_{state}"] = one["peak_rss_mib"], one["first_frame_s"]
                print(f"{path} one file {state}: peak RSS {one['peak_rss_mib']:.0f} MiB, first frame "
                      f"{one['first_frame_s']:.2f} s, {one['frames']} frames ({one['engine']})", flush=True)
            cams_cache = work / f"cache-cams-{path}"
            for state in ("cold", "warm"):
                many = launch(path, artifact, redis, cams_cache, camera_urls, args.camera_frames, None)
                r[f"cams_rss_{state}"] = many["peak_rss_mib"]
                print(f"{path} {args.cameras} cameras {state}: peak RSS {many['peak_rss_mib']:.0f} MiB, "
                      f"{many['frames']} frames", flush=True)
            results[path] = r
        fps: dict[str, list[float]] = {p: [] for p in PATHS}
        for _ in range(args.fps_runs):
            for path in PATHS:
                fps[path].append(launch(path, artifact, redis, work / f"cache-{path}", [long_clip], None, None)["fps"])
        print(f"frames/s ({args.fps_frames}-frame 640x360 clip, warm, best of {args.fps_runs}): "
              + ", ".join(f"{p} {max(v):.2f} (runs {', '.join(f'{x:.2f}' for x in v)})" for p, v in fps.items()), flush=True)
    finally:
        cameras.stop()
        redis.stop()
    today_ms, ours_ms = paste_figures()

    tf, td = results["torch-free"], results["today"]
    worse = lambda r, key: max(r[f"{key}_cold"], r[f"{key}_warm"])  # noqa: E731
    print()
    print("| | torch-free | today (--engine openvino) | ratio |")
    print("|---|---|---|---|")
    print(f"| peak RSS, one file (worse of cold/warm) | {worse(tf, 'file_rss'):.0f} MiB | {worse(td, 'file_rss'):.0f} MiB "
          f"| {worse(tf, 'file_rss') / worse(td, 'file_rss'):.2f} |")
    print(f"| peak RSS, {args.cameras} cameras (worse of cold/warm) | {worse(tf, 'cams_rss'):.0f} MiB | "
          f"{worse(td, 'cams_rss'):.0f} MiB | {worse(tf, 'cams_rss') / worse(td, 'cams_rss'):.2f} |")
    for state in ("warm", "cold"):
        print(f"| start -> first frame, {state} | {tf[f'first_{state}']:.2f} s | {td[f'first_{state}']:.2f} s | "
              f"{tf[f'first_{state}'] / td[f'first_{state}']:.2f} |")
    print(f"| frames/s (best of {args.fps_runs} alternated runs) | {max(fps['torch-free']):.2f} | {max(fps['today']):.2f} | "
          f"{max(fps['torch-free']) / max(fps['today']):.2f} |")
    print(f"| paste + RLE, 20 instances at 1280x720 | {ours_ms:.2f} ms | {today_ms:.2f} ms (torch) | "
          f"{today_ms / ours_ms:.2f}x faster |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        p = argparse.ArgumentParser()
        p.add_argument("mode")
        p.add_argument("path", choices=PATHS)
        p.add_argument("--artifact", required=True)
        p.add_argument("--redis", required=True)
        p.add_argument("--max-frames", type=int)
        p.add_argument("sources", nargs="+")
        a = p.parse_args()
        child(a.path, a.artifact, a.redis, a.sources, a.max_frames)
    else:
        main()
