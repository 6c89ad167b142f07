"""Engine-only frames/s vs end-to-end pipeline frames/s, same model, device and clip, one run.

Engine-only: the clip decoded and preprocessed beforehand, then only `engine.infer` timed.
Pipeline: `segstream run` on the same clip into a real (private) Redis: decode, preprocess,
engine, postprocess (mask pasting + RLE) and publish, as worker threads with bounded queues.
The two are measured alternately (A B A B ...) and the ratio of the medians is printed, with
the per-stage mean time per call and the mean frame latency of the pipeline runs.

    .venv/bin/python benchmarks/pipeline_vs_engine.py [--frames 90] [--rounds 2] [--model shapes] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import av
import torch

from segstream.pipeline.config import RunConfig
from segstream.pipeline.messages import Frame
from segstream.pipeline.stages.preprocess import Preprocess, fit_size
from segstream.commands.local_redis import LocalRedis
from segstream.pipeline.run import run
from segstream.pipeline.streaming import make_engine
from segstream.pipeline.sources.decoding import PixelConverter
from worker_thread import on_worker_thread


def decoded_frames(video: Path, input_size: tuple[int, int]) -> list[Frame]:
    """The clip's frames as the pipeline's source delivers them (decoded straight to the input size)."""
    pixels = PixelConverter(lambda h, w: fit_size(h, w, input_size))
    frames = []
    with av.open(str(video)) as container:
        for i, f in enumerate(container.decode(video=0)):
            image, source_size = pixels.convert(f)
            frames.append(Frame("bench", i, None, time.time(), image, source_size=source_size))
    return frames


def engine_only_fps(engine, frames: list[Frame], batch_size: int) -> float:
    """Frames/s of engine.infer alone, called from a worker thread as the pipeline's inference stage is.

    (torch's OpenMP team differs per calling thread; timing it on the main thread measures a
    different configuration from the one the pipeline runs.)
    """
    return on_worker_thread(lambda: _engine_loop(engine, frames, batch_size))


def _engine_loop(engine, frames: list[Frame], batch_size: int) -> float:
    pre = Preprocess(engine.config, engine.device, batch_size)
    batches = [pre.batch(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size)]
    engine.infer(batches[0].images, batches[0].image_sizes)  # warm-up
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        engine.infer(batch.images, batch.image_sizes)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return len(frames) / (time.perf_counter() - start)


def bench_clip(video: str | None, frames: int, folder: Path) -> Path:
    """The clip to time: `video` when given, else `frames` frames of the shapes domain (640x360, seed 77)."""
    if video:
        return Path(video)
    from segstream.shapes.clip import render_clip

    path = folder / "bench.mp4"
    render_clip(path, folder / "bench.json", seed=77, frames=frames)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--video", help="a clip to use (default: a rendered shapes clip, 640x360)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="segstream-bench-"))
    video = bench_clip(args.video, args.frames, folder)
    config = RunConfig()
    config.model.name = args.model
    config.engine.device = args.device
    config.engine.batch_size = args.batch_size
    config.output.progress = False
    engine, loaded = make_engine(config)
    frames = decoded_frames(video, engine.config.input_size)
    engine_fps, pipeline_fps, stage_ms, latency = [], [], {}, []
    with LocalRedis() as url:
        config.redis.url = url
        run([str(video)], config, engine=engine, stream_ids=["warmup"])
        for _ in range(args.rounds):
            engine_fps.append(engine_only_fps(engine, frames, args.batch_size))
            summary = run([str(video)], config, engine=engine, stream_ids=["bench"])
            pipeline_fps.append(summary.fps)
            latency.append(summary.streams["bench"].mean_latency)
            for s in summary.stages:
                stage_ms.setdefault(s.name, []).append(s.mean_ms())
    e, p = statistics.median(engine_fps), statistics.median(pipeline_fps)
    print(f"clip: {video.name}, {len(frames)} frames {frames[0].width}x{frames[0].height}; model {loaded.source}; "
          f"device {args.device}; batch {args.batch_size}; torch threads {torch.get_num_threads()}")
    print(f"engine-only frames/s per round: {', '.join(f'{v:.2f}' for v in engine_fps)}")
    print(f"pipeline frames/s per round:    {', '.join(f'{v:.2f}' for v in pipeline_fps)}")
    print(f"pipeline / engine-only = {p / e:.3f}  (medians {p:.2f} / {e:.2f} frames/s)")
    print("per-stage mean time per call (ms): " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in stage_ms.items()))
    print(f"mean frame latency in the pipeline (decode -> published): {statistics.median(latency) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
