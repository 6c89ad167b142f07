"""Acceptance (issue 11): a subscriber survives 75 s of quiet and a Redis restart, then prints the next frame.

Real time constants throughout: the real `segstream subscribe` CLI with its defaults, a real
redis-server (appendonly) SIGKILLed during the quiet period and restarted some seconds later. After
the quiet period one frame entry is XADDed; the script measures how long the CLI takes to print
`frame 1`, and checks that stderr has exactly one "unreachable" and one "reachable again" line.

    .venv/bin/python benchmarks/subscriber_quiet.py [--quiet 75] [--kill-at 20] [--down 10]

Prints PASS or FAIL (exit 0 / 1) and the delay to the next frame.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from redis_server import PrivateRedis, stop_process  # noqa: E402


def frame(n: int) -> dict:
    return {"schema": 1, "stream": "quiet", "frame": n, "pts": None, "time": time.time(), "width": 640,
            "height": 360, "dropped": 0, "instances": []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", type=float, default=75.0, help="seconds without any entry")
    parser.add_argument("--kill-at", type=float, default=20.0, help="SIGKILL Redis this many seconds into the quiet")
    parser.add_argument("--down", type=float, default=10.0, help="seconds Redis stays down")
    parser.add_argument("--max-delay", type=float, default=7.0, help="PASS needs the frame printed within this")
    args = parser.parse_args()

    server = PrivateRedis(appendonly=True)
    with server:
        server.client().xadd("segstream:quiet", {"data": json.dumps(frame(0))})
        exe = Path(sys.executable).with_name("segstream")
        cli = subprocess.Popen([str(exe), "subscribe", "quiet", "--redis", server.url, "--from-start"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out: queue.Queue = queue.Queue()
        err: list[str] = []
        err_at: list[float] = []
        threading.Thread(target=lambda: [out.put((time.monotonic(), line.rstrip())) for line in cli.stdout],
                         daemon=True).start()
        threading.Thread(target=lambda: [(err_at.append(time.monotonic()), err.append(line.rstrip()))
                                         for line in cli.stderr], daemon=True).start()
        try:
            _, first = out.get(timeout=60)
            print(f"subscriber: {first}", flush=True)
            quiet_start = time.monotonic()
            time.sleep(args.kill_at)
            server.kill()
            print(f"t={time.monotonic() - quiet_start:.0f} s: redis-server SIGKILLed", flush=True)
            time.sleep(args.down)
            server.restart()
            back = time.monotonic()
            print(f"t={time.monotonic() - quiet_start:.0f} s: redis-server restarted (appendonly)", flush=True)
            time.sleep(max(0.0, args.quiet - (time.monotonic() - quiet_start)))
            alive = cli.poll() is None
            published = time.monotonic()
            server.client().xadd("segstream:quiet", {"data": json.dumps(frame(1))})
            print(f"t={published - quiet_start:.0f} s: frame 1 published (subscriber alive: {alive})", flush=True)
            try:
                printed, line = out.get(timeout=max(30.0, args.max_delay))
                delay = printed - published
            except queue.Empty:
                line, delay = "", float("inf")
        finally:
            stop_process(cli)
    print(f"subscriber: {line}")
    for warning in err:
        print(f"subscriber stderr: {warning}")
    rejoined = [at - back for at, w in zip(err_at, err) if "reachable again" in w]
    if rejoined:
        print(f"subscriber reconnected {rejoined[0]:.1f} s after redis-server was back")
    outages = sum("unreachable since" in w for w in err)
    recoveries = sum("reachable again" in w for w in err)
    ok = (alive and line.startswith("quiet frame 1 ") and delay <= args.max_delay and outages == 1 and recoveries == 1
          and not any("Traceback" in w for w in err))
    print(f"{'PASS' if ok else 'FAIL'}: {args.quiet:.0f} s quiet with Redis down from t={args.kill_at:.0f} s for "
          f"{args.down:.0f} s; next frame printed {delay:.3f} s after it was published "
          f"(outage warnings: {outages}, recovery lines: {recoveries})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
