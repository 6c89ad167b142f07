"""CPU engines side by side: engine-only and pipeline frames/s of torch, onnxruntime and openvino.

Every engine is opened once (builds and conversions happen before any timing), then each round
times every engine in turn (rounds interleaved: torch, onnxruntime, openvino fp32, ..., then again),
so the machine's load drifts over all of them alike. Per engine: the median and the spread
(min-max) over rounds of
  engine-only: the clip decoded and preprocessed beforehand, `engine.infer` alone on a worker thread;
  pipeline:    `segstream run` on the clip into a private Redis (decode, preprocess, engine,
               postprocess, publish as worker threads),
and the ratio to torch's median. Pipeline runs use the default `engine.overlap` (a split engine's
trunk and heads on two threads, one batch apart); the engines named in --serial also run with
overlap off ("serial": the engine whole in one stage, the pipeline before overlap existed), and
their ratios are printed too. openvino variants with other thread counts (--openvino-threads)
show how the engine's threads and the pipeline's other threads share the cores.

    .venv/bin/python benchmarks/engines_cpu.py [--frames 60] [--rounds 3] [--precisions fp32,bf16,int8]
        [--openvino-threads 1] [--serial torch,"openvino fp32"] [--model shapes]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pipeline_vs_engine import bench_clip, decoded_frames, engine_only_fps
from segstream.engines.factory import EngineError, open_engine
from segstream.engines.models import load_model
from segstream.pipeline.config import RunConfig
from segstream.commands.local_redis import LocalRedis
from segstream.pipeline.run import run


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--precisions", default="fp32,bf16,int8", help="openvino precisions to include")
    parser.add_argument("--openvino-threads", default="1", help="openvino thread counts, each with every precision")
    parser.add_argument("--serial", default="torch,openvino fp32",
                        help="engines also run without overlap (engine.overlap: false), as before it existed")
    parser.add_argument("--no-onnxruntime", action="store_true")
    parser.add_argument("--video", help="a clip to use (default: a rendered shapes clip, 640x360)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="segstream-bench-"))
    video = bench_clip(args.video, args.frames, folder)
    model = load_model(args.model)
    default_threads = torch.get_num_threads()
    threads = [int(t) for t in args.openvino_threads.split(",") if t]
    engines: dict[str, object] = {"torch": open_engine("torch", model, "cpu", 1)}
    if not args.no_onnxruntime:
        try:
            engines["onnxruntime"] = open_engine("onnxruntime", model, "cpu", 1)
        except EngineError as exc:
            print(f"onnxruntime left out: {exc}")
    for precision in [p for p in args.precisions.split(",") if p]:
        for count in threads:
            started = time.perf_counter()
            engine = open_engine("openvino", model, "cpu", 1, precision=precision, threads=count)
            what = "built" if engine.built else "from the cache"
            print(f"openvino {precision} threads {count}: {what} in {time.perf_counter() - started:.1f} s")
            engines[f"openvino {precision}" + (f" t{count}" if len(threads) > 1 else "")] = engine
    # Each variant: (engine, overlap). "serial" = the engine whole in one stage, as before overlap.
    variants: dict[str, tuple[object, bool]] = {name: (engine, True) for name, engine in engines.items()}
    for name in [n for n in args.serial.split(",") if n in engines]:
        variants[f"{name} serial"] = (engines[name], False)

    frames = decoded_frames(video, model.config.input_size)
    config = RunConfig()
    config.output.progress = False
    config.redis.maxlen = 100_000
    engine_fps: dict[str, list[float]] = {name: [] for name in variants}
    pipeline_fps: dict[str, list[float]] = {name: [] for name in variants}
    engine_ms: dict[str, list[float]] = {name: [] for name in variants}

    def pipeline(name: str, stream: str):
        engine, overlap = variants[name]
        config.engine.overlap = overlap
        torch.set_num_threads(default_threads)  # overlap sets torch's threads for the run; start each run alike
        return run([str(video)], config, engine=engine, stream_ids=[stream])

    with LocalRedis() as url:
        config.redis.url = url
        for name in variants:  # warm-up: first calls, decoder, Redis
            pipeline(name, "warmup")
        for round_index in range(args.rounds):
            for name, (engine, _) in variants.items():
                torch.set_num_threads(default_threads)
                if not name.endswith("serial"):  # engine-only: the same calls for both variants
                    engine_fps[name].append(engine_only_fps(engine, frames, 1))
                summary = pipeline(name, f"r{round_index}")
                pipeline_fps[name].append(summary.fps)
                engine_ms[name].append(sum(s.mean_ms() for s in summary.stages if s.name in ("features", "inference")))
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    print(f"\nclip: {video.name}, {len(frames)} frames; model {model.source}; input "
          f"{model.config.input_size[0]}x{model.config.input_size[1]}; batch 1; {os.cpu_count()} cores; "
          f"torch threads {default_threads} (overlapped runs: {max(1, default_threads // 2)}); {args.rounds} rounds "
          f"interleaved; decoder threads {config.source.decoder_threads or 1}")
    base_engine = statistics.median(engine_fps["torch"])
    base_pipeline = statistics.median(pipeline_fps["torch"])
    print(f"{'engine':24s} {'engine-only fps (spread)':>26s} {'x torch':>8s} {'pipeline fps (spread)':>24s} {'x torch':>8s}"
          f" {'engine ms/frame':>16s}")
    for name in variants:
        p = statistics.median(pipeline_fps[name])
        if engine_fps[name]:
            e = statistics.median(engine_fps[name])
            engine_text = f"{_spread(engine_fps[name]):>26s} {e / base_engine:8.2f}"
        else:
            engine_text = f"{'(as above)':>26s} {'':8s}"
        print(f"{name:24s} {engine_text} {_spread(pipeline_fps[name]):>24s}"
              f" {p / base_pipeline:8.2f} {statistics.median(engine_ms[name]):16.1f}")
    print("per-round pipeline ratio to torch (same round): " + "; ".join(
        f"{name} " + ", ".join(f"{v / t:.2f}" for v, t in zip(pipeline_fps[name], pipeline_fps["torch"]))
        for name in variants if name != "torch"
    ))
    if "torch serial" in variants:
        serial = pipeline_fps["torch serial"]
        print("per-round pipeline ratio to torch serial: " + "; ".join(
            f"{name} " + ", ".join(f"{v / t:.2f}" for v, t in zip(pipeline_fps[name], serial))
            for name in variants if name != "torch serial"
        ))


if __name__ == "__main__":
    main()
