"""What the user sees while a run goes: a progress bar per file, a status line per camera."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm


@dataclass
class StreamTally:
    """Per-stream counters, also the source of the run summary."""

    stream_id: str
    live: bool
    expected: int = 0
    published: int = 0
    instances: int = 0
    dropped: int = 0
    latency_sum: float = 0.0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    eos_frames: int | None = None

    @property
    def fps(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.published / elapsed if elapsed > 0 else 0.0

    @property
    def mean_latency(self) -> float:
        return self.latency_sum / self.published if self.published else 0.0


class Progress:
    """Counts published frames; draws bars (TTY) or prints status lines every `interval` seconds."""

    def __init__(self, tallies: dict[str, StreamTally], enabled: bool = True, interval: float = 5.0,
                 out: TextIO | None = None) -> None:
        self.tallies = tallies
        self.out = out or sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.use_bars = enabled and self.out.isatty()
        self._bars: dict[str, tqdm] = {}
        self._last_status = time.monotonic()

    def frame(self, stream_id: str, instances: int, dropped: int, latency: float) -> None:
        tally = self.tallies[stream_id]
        tally.published += 1
        tally.instances += instances
        tally.dropped += dropped
        tally.latency_sum += latency
        if not self.enabled:
            return
        if self.use_bars and not tally.live:
            bar = self._bars.get(stream_id)
            if bar is None:
                bar = self._bars[stream_id] = tqdm(
                    total=tally.expected or None, desc=stream_id, unit="frame", file=self.out,
                    position=len(self._bars), leave=True, dynamic_ncols=True,
                )
            bar.update(1)
        now = time.monotonic()
        if now - self._last_status >= self.interval:
            self._last_status = now
            for t in self.tallies.values():
                if (t.live or not self.use_bars) and t.finished is None:
                    print(self.status_line(t), file=self.out, flush=True)

    @staticmethod
    def status_line(t: StreamTally) -> str:
        total = f"/{t.expected}" if t.expected and not t.live else ""
        dropped = f"  dropped {t.dropped}" if t.live else ""
        return (f"[{t.stream_id}] {t.published}{total} frames  {t.fps:.1f} fps{dropped}"
                f"  latency {t.mean_latency:.2f} s")

    def end(self, stream_id: str, frames: int) -> None:
        tally = self.tallies[stream_id]
        tally.finished = time.monotonic()
        tally.eos_frames = frames
        bar = self._bars.pop(stream_id, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        for t in self.tallies.values():
            if t.finished is None:
                t.finished = time.monotonic()
