"""GPU throughput and latency: eager torch vs the static engine (CUDA graphs), engine vs pipeline,
and N concurrent paced 720p30 streams (issue 13, item 5).

    python benchmarks/gpu_streams.py --out DIR                 # on a GPU (benchmarks/gpu_check.sh runs it)
    python benchmarks/gpu_streams.py --dry-run --out DIR       # the same code on the CPU, tiny sizes

Models: the bundled `shapes` model and torchvision's Mask R-CNN R50-FPN architecture with RANDOM
weights (speed only; nothing downloaded), both at the same 736x1280 input. The score threshold is
0 and K = `--detections` (50), so every frame carries about K detections and mask pasting and RLE
cost the same in every run (the mean count per frame is printed).

1. engine: frames/s of `torch` (eager; fp16 under torch.autocast) and `static` (CUDA-graph replay,
   same precision) for each batch and precision; rounds alternate between the engines, median of
   the rounds, spread = (max - min) / median.
2. pipeline: the same engine inside segstream's chain (preprocess -> inference -> postprocess on the
   device -> a counting stage) fed as fast as it takes 1280x720 frames from memory; pipeline/engine
   frames/s ratio. No decoder in this number (decoding is measured by the streams part's source).
3. streams: N producers each pacing 1280x720 frames at 30 fps like a camera (drop-oldest lanes of 2,
   as live sources have); p50/p99 capture->postprocessed latency, frames dropped, for growing N.
4. GPU memory (peak allocated per case) and a torch profiler summary of one engine at batch 8.

Writes DIR/gpu_streams.json and DIR/gpu_streams.md (tables) and DIR/profile_*.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segstream.engines.model_config import ModelConfig  # noqa: E402
from segstream.engines.models import LoadedModel, apply_test_thresholds, build_network, load_model, preset_config  # noqa: E402
from segstream.engines.static_engine import StaticEngine  # noqa: E402
from segstream.engines.torch_engine import TorchEngine  # noqa: E402
from segstream.pipeline.stages.inference import Inference  # noqa: E402
from segstream.pipeline.messages import Frame, FrameResult  # noqa: E402
from segstream.pipeline.stages.postprocess import Postprocess  # noqa: E402
from segstream.pipeline.stages.preprocess import Preprocess  # noqa: E402
from segstream.pipeline.queues import EdgePolicy  # noqa: E402
from segstream.pipeline.runtime import Chain  # noqa: E402


# ---------------------------------------------------------------- models and engines


def make_model(name: str, input_size: tuple[int, int], detections: int) -> LoadedModel:
    if name == "r50":
        config = preset_config("maskrcnn_resnet50_fpn", input_size)
        torch.manual_seed(0)
        network = build_network(config)
        source = "torchvision maskrcnn_resnet50_fpn architecture, random weights"
    else:
        loaded = load_model(name, input_size=input_size, allow_download=False)
        config, network, source = loaded.config, loaded.network, loaded.source
    config = config.replace(score_threshold=0.0, max_detections=detections)
    apply_test_thresholds(network, config)
    return LoadedModel(config=config, network=network.eval(), placeholder=True, source=source)


class EagerEngine(TorchEngine):
    """The torch engine, in fp16/bf16 under autocast (what 'eager torch in that precision' means)."""

    def __init__(self, model: LoadedModel, device: torch.device, max_batch: int, precision: str) -> None:
        super().__init__(model, device, max_batch)
        self.autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

    def infer(self, images, image_sizes):
        if self.autocast is None:
            return super().infer(images, image_sizes)
        with torch.autocast(self.device.type, dtype=self.autocast):
            return super().infer(images, image_sizes)


def make_engine(kind: str, model: LoadedModel, device: torch.device, batch: int, precision: str):
    if kind == "static":
        return StaticEngine(model, device, batch, precision=precision)
    return EagerEngine(model, device, batch, precision)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frames_pool(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random RGB frames (uint8 [height, width, 3])."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 255, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
        out.append(np.ascontiguousarray(np.repeat(np.repeat(coarse, 40, 0), 40, 1)[:height, :width]))
    return out


# ---------------------------------------------------------------- 1. engine only


def engine_case(model: LoadedModel, device: torch.device, batch: int, precision: str, rounds: int,
                calls: int) -> dict[str, Any]:
    height, width = model.config.input_size
    g = torch.Generator().manual_seed(batch)
    images = torch.randn((batch, 3, height, width), generator=g).to(device)
    sizes = [(height, width)] * batch
    engines = {kind: make_engine(kind, model, device, batch, precision) for kind in ("torch", "static")}
    times: dict[str, list[float]] = {kind: [] for kind in engines}
    found: dict[str, float] = {}
    memory: dict[str, int] = {}
    for kind, engine in engines.items():  # warm-up (the static engine captures its graph here)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = engine.infer(images, sizes)
        sync(device)
        found[kind] = sum(len(r) for r in result) / batch
        memory[kind] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    for _ in range(rounds):
        for kind, engine in engines.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                engine.infer(images, sizes)
            sync(device)
            times[kind].append((time.perf_counter() - start) / calls)
    out: dict[str, Any] = {"batch": batch, "precision": precision}
    for kind in engines:
        median = statistics.median(times[kind])
        out[kind] = {"ms_per_batch": median * 1e3, "fps": batch / median,
                     "spread": (max(times[kind]) - min(times[kind])) / median,
                     "detections_per_frame": found[kind], "peak_bytes": memory[kind]}
        engines[kind].close()
    out["static_over_torch"] = out["static"]["fps"] / out["torch"]["fps"]
    return out


def on_worker_thread(fn, *args):
    """fn(*args) on a fresh thread, as the pipeline calls its engine: on a CPU the main thread's
    OpenMP team runs torch far slower on a loaded machine (docs/pipeline.md), which would skew the ratio."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="engine-bench")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------- 2./3. the chain


class MemoryFrames:
    """A producer of 1280x720 frames from memory: as fast as taken, or paced at `fps` like a camera."""

    def __init__(self, name: str, pool: list[np.ndarray], frames: int, fps: float | None, live: bool) -> None:
        self.name, self.pool, self.frames, self.fps, self.live = name, pool, frames, fps, live

    def items(self, stopping: threading.Event) -> Iterator[Frame]:
        start = time.monotonic()
        for index in range(self.frames):
            if stopping.is_set():
                return
            if self.fps:
                delay = start + index / self.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield Frame(self.name, index, index / (self.fps or 30.0), time.time(), self.pool[index % len(self.pool)],
                        live=self.live)


class Collect:
    """Last stage: records each frame's capture->postprocessed latency."""

    name = "collect"
    take = 64

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.instances = 0

    def process(self, items: list[Any]) -> list[Any]:
        now = time.time()
        for item in items:
            if isinstance(item, FrameResult):
                self.latencies.append(now - item.frame.time)
                self.instances += len(item.instances)
        return []

    def flush(self) -> list[Any]:
        return []


def run_chain(engine, producers: list[MemoryFrames], batch: int, live: bool) -> dict[str, Any]:
    collect = Collect()
    dropped = [0]
    chain = Chain(
        producers=[],
        stages=[Preprocess(engine.config, engine.device, batch), Inference(engine),
                Postprocess(engine.config.class_names, engine.config.mask_threshold, take=batch, regions=False),
                collect],
        queue_sizes=[max(batch, 8), 2, 8, 64],
        batchable=lambda item: isinstance(item, Frame),
        max_batch_wait=0.005,
    )
    for producer in producers:
        if live:
            policy = EdgePolicy(2, "drop_oldest", droppable=lambda item: isinstance(item, Frame),
                                on_drop=lambda _item: dropped.__setitem__(0, dropped[0] + 1))
        else:
            policy = EdgePolicy(max(batch, 8), "block")
        chain.add_producer(producer, policy)
    start = time.perf_counter()
    chain.start()
    chain.wait()
    elapsed = time.perf_counter() - start
    lat = sorted(collect.latencies)
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")  # noqa: E731
    return {"frames": len(lat), "seconds": elapsed, "fps": len(lat) / elapsed, "p50_ms": pick(0.5),
            "p99_ms": pick(0.99), "dropped": dropped[0], "instances_per_frame": collect.instances / max(1, len(lat))}


# ---------------------------------------------------------------- 4. profiler


def profile(engine, device: torch.device, batch: int, path: Path) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    height, width = engine.config.input_size
    images = torch.randn((batch, 3, height, width)).to(device)
    sizes = [(height, width)] * batch
    engine.infer(images, sizes)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(3):
            engine.infer(images, sizes)
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=25))


# ---------------------------------------------------------------- main


def table(rows: list[list[Any]], header: list[str]) -> str:
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu-logs"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny input and counts: checks the script end to end")
    p.add_argument("--models", nargs="+", default=["r50", "shapes"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16])
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    p.add_argument("--input-size", default="736x1280")
    p.add_argument("--detections", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=5, help="engine calls per round")
    p.add_argument("--pipeline-frames", type=int, default=256)
    p.add_argument("--streams", nargs="+", type=int, default=[4, 8, 12, 16, 24])
    p.add_argument("--stream-seconds", type=float, default=8.0)
    p.add_argument("--stream-model", default="r50")
    p.add_argument("--stream-precision", default="fp16")
    p.add_argument("--stream-batch", type=int, default=8)
    args = p.parse_args(argv)
    if args.dry_run:
        args.input_size, args.batches, args.precisions, args.detections = "128x224", [2], ["fp32"], 5
        args.rounds, args.calls, args.pipeline_frames, args.streams, args.stream_seconds = 1, 1, 4, [1], 0.3
        args.stream_batch, args.stream_precision = 2, "fp32"
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    height, width = (int(v) for v in args.input_size.split("x"))
    frame_h, frame_w = (720, 1280) if not args.dry_run else (72, 128)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "input_size": [height, width], "detections": args.detections,
                              "engine": [], "pipeline": [], "streams": []}
    pool = frames_pool(16, frame_h, frame_w)

    def dump() -> None:  # after every case: a run cut short by its time limit keeps what it measured
        (args.out / "gpu_streams.json").write_text(json.dumps(report, indent=1))

    say = lambda text: print(text, flush=True)  # noqa: E731
    # Streams first: the acceptance figure, kept if a time limit cuts the sweep below short.
    model = make_model(args.stream_model, (height, width), args.detections)
    engine = make_engine("static", model, device, args.stream_batch, args.stream_precision)
    engine.warm_up()  # every graph captured before the first frame
    for streams in args.streams:
        frames = int(args.stream_seconds * 30)
        producers = [MemoryFrames(f"cam{i}", pool, frames, 30.0, live=True) for i in range(streams)]
        result = run_chain(engine, producers, args.stream_batch, live=True)
        result.update(streams=streams, offered=streams * frames,
                      peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0)
        report["streams"].append(result)
        dump()
        say(f"streams {streams}: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
            f"{result['dropped']} dropped of {result['offered']}")
    engine.close()
    for name in args.models:
        model = make_model(name, (height, width), args.detections)
        say(f"# {name}: {model.source}")
        for precision in args.precisions:
            for batch in args.batches:
                case = on_worker_thread(engine_case, model, device, batch, precision, args.rounds, args.calls)
                case["model"] = name
                report["engine"].append(case)
                dump()
                say(f"engine {name} {precision} b{batch}: torch {case['torch']['fps']:.1f} fps, static "
                    f"{case['static']['fps']:.1f} fps ({case['static_over_torch']:.2f}x), "
                    f"{case['static']['detections_per_frame']:.0f} detections/frame")
                for kind in ("torch", "static"):
                    engine = make_engine(kind, model, device, batch, precision)
                    if kind == "static":
                        engine.warm_up()
                    producer = MemoryFrames("bench", pool, args.pipeline_frames, None, live=False)
                    result = run_chain(engine, [producer], batch, live=False)
                    engine.close()
                    result.update(model=name, precision=precision, batch=batch, engine=kind,
                                  engine_fps=case[kind]["fps"], pipeline_over_engine=result["fps"] / case[kind]["fps"])
                    report["pipeline"].append(result)
                    dump()
                    say(f"pipeline {name} {precision} b{batch} {kind}: {result['fps']:.1f} fps "
                        f"({result['pipeline_over_engine']:.2f} of the engine)")
        if name == "r50" and not args.dry_run:  # the profile takes minutes on a CPU
            try:
                for kind in ("static", "torch"):
                    engine = make_engine(kind, model, device, 8, args.precisions[-1])
                    profile(engine, device, 8, args.out / f"profile_{name}_{kind}.txt")
                    engine.close()
            except Exception as exc:  # the figures above are still written
                say(f"profile failed: {exc!r}")
    (args.out / "gpu_streams.json").write_text(json.dumps(report, indent=1))
    md = [f"{report['device']}, torch {report['torch']}, {report['date']}, input {height}x{width}, "
          f"K={args.detections}, random weights for r50" + (" (DRY RUN on the CPU)" if args.dry_run else ""), "",
          table([[c["model"], c["precision"], c["batch"], c["torch"]["fps"], c["static"]["fps"], c["static_over_torch"],
                  c["static"]["detections_per_frame"], c["static"]["spread"], c["static"]["peak_bytes"] / 2**20]
                 for c in report["engine"]],
                ["model", "precision", "batch", "torch fps", "static fps", "static/torch", "det/frame", "spread",
                 "static peak MiB"]), "",
          table([[r["model"], r["precision"], r["batch"], r["engine"], r["engine_fps"], r["fps"], r["pipeline_over_engine"]]
                 for r in report["pipeline"]],
                ["model", "precision", "batch", "engine", "engine fps", "pipeline fps", "pipeline/engine"]), "",
          table([[r["streams"], r["frames"], r["offered"], r["dropped"], r["p50_ms"], r["p99_ms"], r["peak_bytes"] / 2**20]
                 for r in report["streams"]],
                ["streams", "frames done", "offered", "dropped", "p50 ms", "p99 ms", "peak MiB"])]
    (args.out / "gpu_streams.md").write_text("\n".join(md) + "\n")
    say("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
