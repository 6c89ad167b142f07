"""Issue 11's acceptance figures with real time constants and default settings, through the real
`segstream run` command, real RTSP servers and a real redis-server (append-only):

1. one camera's server killed and restarted `--restarts` times: delay from each restart to the
   camera's next published frame (floor: backoff_max + 2 s = 7 s);
2. two cameras, one dark for `--dark` s (90): the other camera's longest gap between published
   frames (floor 2 s), the dark one's delay to its next published frame after its server is back
   (floor 7 s), whether the run stayed up on its own, and SIGTERM's exit code (0);
3. Redis SIGKILLed and restarted 5 s later during a 300-frame file run: frames lost, duplicated,
   out of order, EOS entries, exit code.

    .venv/bin/python benchmarks/live_acceptance.py [--dark 90] [--restarts 5]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media import write_clip  # noqa: E402
from servers import RtspServer  # noqa: E402

from redis_server import PrivateRedis, free_port  # noqa: E402

EXE = str(Path(sys.executable).with_name("segstream"))


def frames(client, key: str) -> list[tuple[float, dict]]:
    """(publish time from the entry id, message) of each frame entry."""
    out = []
    for entry_id, fields in client.xrange(key):
        message = json.loads(fields[b"data"])
        if "frame" in message:
            out.append((int(entry_id.split(b"-")[0]) / 1000, message))
    return out


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def start_run(args: list[str], url: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, "run", *args, "--redis", url, "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def camera_restarts(url: str, client, restarts: int) -> list[float]:
    port = free_port()
    server = RtspServer(width=320, height=180, fps=10, port=port).start()
    run = start_run([server.url, "--stream-id", "restarts"], url)
    delays = []
    try:
        wait_for(lambda: len(frames(client, "segstream:restarts")) >= 10, 120)
        for _ in range(restarts):
            server.stop()
            time.sleep(3)
            server = RtspServer(width=320, height=180, fps=10, port=port).start()
            back = time.time()
            wait_for(lambda: frames(client, "segstream:restarts")[-1][1]["time"] > back, 60)
            delays.append(frames(client, "segstream:restarts")[-1][0] - back)
            time.sleep(2)
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
        server.stop()
    return delays


def dark_camera(url: str, client, dark: float) -> dict:
    steady = RtspServer(width=320, height=180, fps=10).start()
    port = free_port()
    flaky = RtspServer(width=320, height=180, fps=10, port=port).start()
    run = start_run([steady.url, flaky.url, "--stream-id", "steady", "--stream-id", "dark"], url)
    try:
        wait_for(lambda: len(frames(client, "segstream:dark")) >= 10, 120)
        flaky.stop()
        went_dark = time.time()
        time.sleep(dark)
        alive = run.poll() is None
        flaky = RtspServer(width=320, height=180, fps=10, port=port).start()
        back = time.time()
        wait_for(lambda: frames(client, "segstream:dark")[-1][1]["time"] > back, 60)
        rejoin = frames(client, "segstream:dark")[-1][0] - back
        time.sleep(5)
    finally:
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
        steady.stop()
        flaky.stop()
    times = [t for t, _ in frames(client, "segstream:steady") if t >= went_dark - 2]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"steady_max_gap": max(gaps), "rejoin": rejoin, "stayed_up": alive, "exit": run.returncode,
            "traceback": "Traceback" in stderr}


def redis_killed_mid_file(folder: Path) -> dict:
    clip = write_clip(folder / "film.mp4", frames=300, width=640, height=360)
    server = PrivateRedis(appendonly=True)
    url = server.start()
    run = start_run([str(clip)], url)
    try:
        client = server.client()
        wait_for(lambda: client.xlen("segstream:film") >= 30, 120)
        server.kill()
        time.sleep(5)
        server.restart()
        _, stderr = run.communicate(timeout=600)
        entries = [json.loads(f[b"data"]) for _, f in server.client().xrange("segstream:film")]
    finally:
        server.stop()
    indices = [m["frame"] for m in entries if "frame" in m]
    return {"exit": run.returncode, "lost": len(set(range(300)) - set(indices)),
            "duplicated": len(indices) - len(set(indices)), "in_order": indices == sorted(indices),
            "eos": sum(1 for m in entries if m.get("eos")), "traceback": "Traceback" in stderr}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dark", type=float, default=90)
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    print(f"live acceptance, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, default settings", flush=True)
    server = PrivateRedis()
    with server as url:
        client = server.client()
        delays = camera_restarts(url, client, args.restarts)
        print(f"1. camera restarts: {len(delays)}, delay to the next published frame: "
              + ", ".join(f"{d:.2f}" for d in delays) + f" s (max {max(delays):.2f} s; floor 7 s)", flush=True)
        dark = dark_camera(url, client, args.dark)
        print(f"2. a camera dark {args.dark:g} s: other camera's longest gap {dark['steady_max_gap']:.2f} s (floor 2 s); "
              f"dark camera published again {dark['rejoin']:.2f} s after its server returned (floor 7 s); "
              f"run stayed up on its own: {dark['stayed_up']}; SIGTERM exit {dark['exit']}"
              f"{' (TRACEBACK!)' if dark['traceback'] else ''}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        result = redis_killed_mid_file(Path(folder))
    print(f"3. Redis killed mid-file: exit {result['exit']}, lost {result['lost']}, duplicated {result['duplicated']}, "
          f"in order {result['in_order']}, EOS entries {result['eos']}{' (TRACEBACK!)' if result['traceback'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
