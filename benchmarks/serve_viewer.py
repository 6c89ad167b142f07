"""What a watching live viewer costs the pipeline: frames/s with and without a browser on the
MJPEG stream, rounds interleaved in one run (A B B A A B ...), with the spread of the rounds, and
the viewer's own work per second from its own timings (draw + encode, and its hook on the
publish thread) against the pipeline's (the stages' busy seconds), all read from /metrics.

The cameras send more frames than the engine takes, so the pipeline runs flat out and its
frames/s is the engine's pace; a viewer that slowed the pipeline would show up there.

    .venv/bin/python benchmarks/serve_viewer.py [--cameras 2] [--fps 30] [--rounds 3] [--seconds 15]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import urllib.request

from serve_harness import PrivateRedis, Serve, cameras


class Browser:
    """Reads the MJPEG stream as a browser's <img> does, counting the frames received."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> "Browser":
        self._thread.start()
        return self

    def _read(self) -> None:
        with urllib.request.urlopen(self.url, timeout=30) as response:
            while not self._stop.is_set():
                line = response.readline()
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    size = int(line.split(b":")[1])
                    response.readline()  # blank line
                    response.read(size)
                    self.frames += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def total(metrics: dict, name: str) -> float:
    return sum(metrics.get(name, {}).values())


def sample(serve: Serve) -> dict[str, float]:
    m = serve.metrics()
    status = serve.call("GET", "/viewer/status")[1]
    return {
        "time": time.monotonic(),
        "published": total(m, "segstream_frames_published_total"),
        "stages": total(m, "segstream_stage_busy_seconds_total"),
        "viewer": total(m, "segstream_viewer_busy_seconds_total"),
        "viewer_cpu": status["cpu_seconds"],
        "drawn": total(m, "segstream_viewer_frames_total"),
        "process_cpu": total(m, "process_cpu_seconds_total"),
    }


def rates(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    seconds = b["time"] - a["time"]
    return {k: (b[k] - a[k]) / seconds for k in a if k != "time"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per phase")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after attaching/detaching before measuring")
    parser.add_argument("--input-size", help="network input HxW (default: the model's own)")
    args = parser.parse_args()

    server = cameras(args.cameras, args.width, args.height, args.fps)
    redis = PrivateRedis()
    url = redis.start()
    config = {"redis": {"url": url}, "output": {"progress": False}}
    if args.input_size:
        config["model"] = {"input_size": [int(v) for v in args.input_size.lower().split("x")]}
    results: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    try:
        with Serve(config) as serve:
            for i in range(1, args.cameras + 1):
                status, body = serve.call("POST", "/streams", {"id": f"cam{i}", "url": f"rtsp://127.0.0.1:{server.port}/cam{i}"})
                assert status == 201, body
            time.sleep(10)  # every camera connected and the engine warm
            viewer_fps = serve.call("GET", "/viewer/status")[1]["fps"]
            for r in range(args.rounds):
                order = ("without", "with") if r % 2 == 0 else ("with", "without")
                for mode in order:
                    if mode == "with":
                        with Browser(f"{serve.base}/viewer/streams/cam1.mjpg") as browser:
                            time.sleep(args.settle)
                            a = sample(serve)
                            got = browser.frames
                            time.sleep(args.seconds)
                            b = sample(serve)
                            measured = rates(a, b)
                            measured["received"] = (browser.frames - got) / (b["time"] - a["time"])
                    else:
                        time.sleep(args.settle)
                        a = sample(serve)
                        time.sleep(args.seconds)
                        measured = rates(a, sample(serve))
                    results[mode].append(measured)
                    print(f"round {r + 1} {mode:7} viewer: {measured['published']:.2f} frames/s published, "
                          f"stages busy {measured['stages']:.3f} s/s, viewer busy {measured['viewer'] * 1000:.1f} ms/s, "
                          f"viewer frames {measured['drawn']:.2f}/s, process CPU {measured['process_cpu']:.2f} s/s", flush=True)
            model = next(iter(serve.metrics()["segstream_model_info"]))
            serve.terminate()
    finally:
        server.stop()
        redis.stop()

    def column(mode: str, key: str) -> list[float]:
        return [m[key] for m in results[mode]]

    fps_without, fps_with = column("without", "published"), column("with", "published")
    spread = max(max(fps_without) - min(fps_without), max(fps_with) - min(fps_with))
    difference = statistics.median(fps_without) - statistics.median(fps_with)
    viewer_busy = statistics.median(column("with", "viewer"))
    viewer_cpu = statistics.median(column("with", "viewer_cpu"))
    stages_busy = statistics.median(column("with", "stages"))
    share = viewer_busy / stages_busy if stages_busy else float("nan")
    print(f"\n{args.cameras} cameras {args.width}x{args.height} at {args.fps} fps, {dict(model)}; "
          f"{args.rounds} rounds of {args.seconds:g} s per mode, interleaved; viewer.fps {viewer_fps:g}")
    print(f"pipeline frames/s without a viewer: median {statistics.median(fps_without):.2f} "
          f"(rounds {', '.join(f'{v:.2f}' for v in fps_without)})")
    print(f"pipeline frames/s with a viewer:    median {statistics.median(fps_with):.2f} "
          f"(rounds {', '.join(f'{v:.2f}' for v in fps_with)})")
    print(f"difference of the medians {difference:+.2f} frames/s; largest spread between rounds {spread:.2f} frames/s "
          f"({'within' if abs(difference) <= spread else 'OUTSIDE'} the spread)")
    print(f"viewer frames drawn {statistics.median(column('with', 'drawn')):.2f}/s, received by the browser "
          f"{statistics.median(column('with', 'received')):.2f}/s")
    print(f"viewer's own work: {viewer_busy * 1000:.1f} ms/s busy ({viewer_cpu * 1000:.1f} ms/s thread CPU) against the "
          f"pipeline stages' {stages_busy * 1000:.0f} ms/s busy: {100 * share:.2f} % "
          f"({'within' if share <= 0.05 else 'OVER'} the 5 % budget)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
