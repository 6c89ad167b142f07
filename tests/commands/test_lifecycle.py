"""The one lifecycle (commands/lifecycle.py) with real signals sent to this very process.

The application here is a small real one (threads and events, no mocks): it "works" until told to
drain, and records what the lifecycle asked of it and when.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import pytest

from segstream.commands.lifecycle import EXIT_ABORTED, run_application
from segstream.pipeline.run import RunSummary


class Counter:
    """Counts "frames" on a thread until it is drained or aborted; may end by itself."""

    def __init__(self, frames: int | None = None, start_s: float = 0.0, drain_s: float = 0.0,
                 fail: str | None = None, start_error: Exception | None = None, source_errors: tuple = ()) -> None:
        self.frames, self.start_s, self.drain_s, self.fail, self.start_error = frames, start_s, drain_s, fail, start_error
        self.source_errors = list(source_errors)
        self.count = 0
        self.calls: list[str] = []
        self.drain_timeout: float | None = None
        self._stop = threading.Event()
        self._aborted = threading.Event()
        self._done = threading.Event()

    def start(self) -> None:
        self.calls.append("start")
        time.sleep(self.start_s)  # a model loading
        if self.start_error is not None:
            raise self.start_error
        threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        while not self._stop.is_set() and (self.frames is None or self.count < self.frames):
            self.count += 1
            time.sleep(0.01)
        self._done.set()

    def ended(self) -> bool:
        return self._done.is_set() or self.fail is not None and self.count >= 3

    def drain(self, timeout: float) -> bool:
        self.calls.append("drain")
        self.drain_timeout = timeout
        self._stop.set()
        # In-flight work that takes drain_s to finish, cut short by abort() or the timeout.
        return not self._aborted.wait(self.drain_s) and self.drain_s <= timeout

    def stop(self) -> None:
        self.calls.append("stop")

    def abort(self) -> None:
        self.calls.append("abort")
        self._aborted.set()
        self._stop.set()

    def failure(self) -> str | None:
        return self.fail

    def summary(self) -> RunSummary:
        return RunSummary(streams={}, elapsed=1.0, model_source="counter", placeholder=False, engine="none",
                          stages=[], source_errors=self.source_errors)


def signal_later(*delays_and_signals: tuple[float, int]) -> None:
    def send() -> None:
        for delay, sig in delays_and_signals:
            time.sleep(delay)
            os.kill(os.getpid(), sig)

    threading.Thread(target=send, daemon=True).start()


def handlers() -> tuple:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_an_application_that_ends_by_itself_exits_zero_with_the_summary_and_the_handlers_restored():
    before = handlers()
    app, out = Counter(frames=20), io.StringIO()
    assert run_application(app, shutdown_timeout=5, out=out) == 0
    assert app.calls == ["start", "drain"] and app.count == 20, "drain also closes an application that ended"
    assert "model: counter; engine: none" in out.getvalue() and "total: 0 frames" in out.getvalue()
    assert handlers() == before


def test_sigterm_drains_within_the_shutdown_timeout_and_exits_zero():
    before = handlers()
    app, out = Counter(drain_s=0.3), io.StringIO()
    signal_later((0.5, signal.SIGTERM))
    assert run_application(app, shutdown_timeout=7, out=out) == 0
    assert app.calls == ["start", "drain"] and app.drain_timeout == 7
    assert "SIGTERM received: finishing what is in flight" in out.getvalue()
    assert "interrupted" not in out.getvalue()
    assert handlers() == before


def test_a_second_sigint_during_the_drain_aborts_with_130_at_once():
    before = handlers()
    app, out = Counter(drain_s=60), io.StringIO()
    signal_later((0.5, signal.SIGINT), (0.5, signal.SIGINT))
    started = time.monotonic()
    assert run_application(app, shutdown_timeout=60, out=out) == EXIT_ABORTED
    assert time.monotonic() - started < 3, "the abort does not wait for the drain"
    assert app.calls == ["start", "drain", "abort"]
    assert "interrupted" in out.getvalue() and "model: counter" in out.getvalue()
    assert handlers() == before


def test_a_second_signal_while_the_model_loads_aborts_with_130_without_waiting_for_it():
    app, out = Counter(start_s=30), io.StringIO()
    signal_later((0.3, signal.SIGTERM), (0.3, signal.SIGTERM))
    started = time.monotonic()
    assert run_application(app, shutdown_timeout=5, out=out) == EXIT_ABORTED
    assert time.monotonic() - started < 3
    assert app.calls == ["start", "stop", "abort"]


def test_one_signal_while_starting_asks_it_to_stop_waiting_then_drains_once_started():
    app = Counter(start_s=1.0)
    signal_later((0.3, signal.SIGTERM))
    assert run_application(app, shutdown_timeout=5, out=io.StringIO()) == 0
    assert app.calls == ["start", "stop", "drain"]


def test_a_drain_that_runs_out_of_time_still_exits_zero_and_says_so():
    app, out = Counter(drain_s=1.5), io.StringIO()
    signal_later((0.3, signal.SIGTERM))
    assert run_application(app, shutdown_timeout=1, out=out) == 0
    assert "not everything in flight was finished within shutdown_timeout (1 s)" in out.getvalue()


def test_a_fatal_error_exits_one_with_one_line_naming_it():
    app, out = Counter(fail="engine failed on 3 batches in a row: CUDA error\nsecond line"), io.StringIO()
    assert run_application(app, shutdown_timeout=5, out=out) == 1
    errors = [line for line in out.getvalue().splitlines() if line.startswith("segstream: error:")]
    assert errors == ["segstream: error: engine failed on 3 batches in a row: CUDA error"]


def test_bad_input_found_at_start_is_raised_to_the_command_with_the_handlers_restored():
    before = handlers()
    with pytest.raises(ValueError, match="no such model"):
        run_application(Counter(start_error=ValueError("no such model")), shutdown_timeout=5, out=io.StringIO())
    assert handlers() == before


def test_a_source_found_bad_while_running_exits_two_with_one_line_each():
    app, out = Counter(frames=5, source_errors=("cut.mkv: truncated after 17 frames",)), io.StringIO()
    assert run_application(app, shutdown_timeout=5, out=out) == 2
    assert out.getvalue().splitlines()[-1] == "segstream: error: cut.mkv: truncated after 17 frames"
