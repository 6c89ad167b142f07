"""What the user sees while a run goes: a progress bar per file, a status line per camera.

Status lines name each stream's state (a camera that is reconnecting says so, with since when),
its frames, rate, drops and latency, and say since when Redis is unreachable during an outage.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime
from typing import Callable, TextIO

from tqdm import tqdm

from segstream.pipeline.streams import StreamRegistry, StreamState


def clock(unix: float) -> str:
    return datetime.fromtimestamp(unix).strftime("%H:%M:%S")


class Progress:
    """Draws bars (TTY) for files and prints status lines every `interval` seconds.

    redis_down_since: returns the unix time Redis became unreachable, or None while it is up.
    """

    def __init__(self, registry: StreamRegistry, enabled: bool = True, interval: float = 5.0,
                 out: TextIO | None = None, redis_down_since: Callable[[], float | None] = lambda: None) -> None:
        self.registry = registry
        self.out = out or sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.redis_down_since = redis_down_since
        self.use_bars = enabled and self.out.isatty()
        self._bars: dict[str, tqdm] = {}
        self._last_status = time.monotonic()
        self._lock = threading.Lock()

    def frame(self, state: StreamState) -> None:
        """One frame of `state` was published."""
        if not self.enabled:
            return
        with self._lock:
            if self.use_bars and not state.live:
                bar = self._bars.get(state.stream_id)
                if bar is None:
                    bar = self._bars[state.stream_id] = tqdm(
                        total=state.expected_frames or None, desc=state.stream_id, unit="frame", file=self.out,
                        position=len(self._bars), leave=True, dynamic_ncols=True,
                    )
                bar.update(1)
        self.tick()

    def tick(self) -> None:
        """Print the status lines when `interval` has passed (called on every frame and by a timer)."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last_status < self.interval:
                return
            self._last_status = now
            lines = [self.status_line(s) for s in self.registry.all()
                     if (s.live or not self.use_bars) and s.finished is None]
            down = self.redis_down_since()
            if down is not None:
                lines.append(f"Redis unreachable since {clock(down)} ({time.time() - down:.0f} s); results wait in the outbox")
        for line in lines:
            print(line, file=self.out, flush=True)

    @staticmethod
    def status_line(s: StreamState) -> str:
        total = f"/{s.expected_frames}" if s.expected_frames and not s.live else ""
        state = ""
        if s.live and s.state != "live":
            state = f"  {s.state.upper()} since {clock(s.since)}"
        dropped = f"  dropped {s.dropped_total}" if s.live else ""
        reconnects = f"  reconnects {s.reconnects}" if s.reconnects else ""
        inferred = f"  inferred {s.inferred}/{s.inferred + s.gated}" if s.gating else ""
        return (f"[{s.stream_id}] {s.published}{total} frames  {s.fps:.1f} fps{inferred}{dropped}{reconnects}"
                f"  latency {s.mean_latency:.2f} s{state}")

    def end(self, state: StreamState) -> None:
        with self._lock:
            bar = self._bars.pop(state.stream_id, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
        for s in self.registry.all():
            s.finish()
