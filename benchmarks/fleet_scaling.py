"""File throughput of the fleet with 1 and 2 `segstream worker`s, each pinned to its own core.

    python benchmarks/fleet_scaling.py [--clips 8] [--frames 60] [--rounds 2]

Two workers are started once (`taskset -c 0` and `taskset -c 1`, one torch thread and one decoder
thread each) and load their engine before anything is timed. Rounds alternate 1 worker (the second
one SIGSTOPped: it takes nothing) and 2 workers; each round submits the same clips as new jobs and
times submit -> every job done (EOS on Redis, job acknowledged). Redis and this driver are not
pinned: they share the two cores with the workers, and the CPU seconds they used in the timed
windows are printed beside the workers' own. Prints per-round frames/s, the ratio of the medians
and the spread of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import yaml  # noqa: E402
from media import write_clip  # noqa: E402

from segstream.fleet.jobs import JobQueue  # noqa: E402
from segstream.fleet.keys import FleetKeys  # noqa: E402
from redis_server import PrivateRedis  # noqa: E402

SEGSTREAM = str(Path(sys.executable).with_name("segstream"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (and its reaped children) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICK


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2, help="pairs of (1 worker, 2 workers) rounds")
    p.add_argument("--input-size", default="128x224")
    args = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        print("needs two cores", file=sys.stderr)
        return 2
    h, w = (int(v) for v in args.input_size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    clips = [write_clip(work / f"clip{i}.mp4", width=w, height=h, frames=args.frames) for i in range(args.clips)]
    redis = PrivateRedis()
    url = redis.start()
    config = work / "fleet.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"input_size": [h, w], "score_threshold": 0.05},
        "engine": {"threads": 1, "batch_size": 4},
        "source": {"decoder_threads": 1},
        "redis": {"url": url},
        "output": {"progress": False},
        "fleet": {"lease": 10, "heartbeat": 1, "capacity": 4},
    }))
    client = redis.client()
    workers = []
    for core in (0, 1):
        log = (work / f"worker{core}.log").open("w")
        workers.append(subprocess.Popen(["taskset", "-c", str(core), SEGSTREAM, "worker", "--config", str(config),
                                         "--name", f"core{core}"], stdout=log, stderr=subprocess.STDOUT))
    queue = JobQueue(client, FleetKeys())
    try:
        deadline = time.monotonic() + 300
        while not all(client.exists(f"segstream:fleet:worker:core{c}") for c in (0, 1)):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                print("workers did not start; see", work, file=sys.stderr)
                return 1
            time.sleep(0.5)
        results: dict[int, list[float]] = {1: [], 2: []}
        total_frames = args.clips * args.frames
        print(f"{args.clips} clips x {args.frames} frames at {w}x{h}, {args.rounds} rounds of each; "
              f"workers pinned to cores 0 and 1", flush=True)
        for round_no in range(args.rounds * 2):
            count = 1 if round_no % 2 == 0 else 2
            if count == 1:
                workers[1].send_signal(signal.SIGSTOP)
                time.sleep(2)  # its last blocking XREADGROUP (1 s) ends on the server: it gets no job
            else:
                workers[1].send_signal(signal.SIGCONT)
                time.sleep(2)  # its heartbeat and XREADGROUP are back
            before = {"redis": cpu_seconds(redis.process.pid), "driver": time.process_time(),
                      **{f"core{i}": cpu_seconds(wk.pid) for i, wk in enumerate(workers)}}
            started = time.monotonic()
            jobs = [queue.submit(str(clip), f"r{round_no}-{clip.stem}") for clip in clips]
            while True:
                pipe = client.pipeline(transaction=False)
                for job in jobs:
                    pipe.hget(f"segstream:fleet:job:{job}", "state")
                states = [s.decode() if s else "?" for s in pipe.execute()]
                if all(s in ("done", "failed") for s in states):
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            failed = states.count("failed")
            used = {"redis": cpu_seconds(redis.process.pid) - before["redis"],
                    "driver": time.process_time() - before["driver"],
                    **{f"core{i}": cpu_seconds(wk.pid) - before[f"core{i}"] for i, wk in enumerate(workers)}}
            fps = total_frames / elapsed
            results[count].append(fps)
            cpu = ", ".join(f"{k} {v:.1f} s" for k, v in used.items())
            print(f"round {round_no + 1}: {count} worker(s): {total_frames} frames in {elapsed:.1f} s = {fps:.1f} frames/s"
                  f"{f', {failed} FAILED' if failed else ''}; CPU in the window: {cpu} "
                  f"(redis {100 * used['redis'] / elapsed:.0f}% of a core, driver {100 * used['driver'] / elapsed:.0f}%)",
                  flush=True)
        ratios = [b / a for a, b in zip(results[1], results[2])]
        ratio = statistics.median(results[2]) / statistics.median(results[1])
        print(f"throughput 2 workers / 1 worker: {ratio:.2f} (median frames/s {statistics.median(results[2]):.1f} / "
              f"{statistics.median(results[1]):.1f}; per-pair ratios {', '.join(f'{r:.2f}' for r in ratios)})")
    finally:
        for wk in workers:
            wk.send_signal(signal.SIGCONT)
            wk.send_signal(signal.SIGTERM)
        for wk in workers:
            try:
                wk.wait(30)
            except subprocess.TimeoutExpired:
                wk.kill()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
