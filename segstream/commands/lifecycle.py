"""The one lifecycle of every command that runs the pipeline (`run`, `serve`, `worker`).

    start ─▶ running ─┬─ ended by itself (a file run finished, or a fatal error) ─┐
                      └─ SIGINT / SIGTERM ─▶ drain (≤ shutdown_timeout) ───────────┴─▶ summary, exit code
                                              └─ a second signal ─▶ abort ─▶ exit 130

Exit codes, the same for every command:

- 0: the application ended by itself, or drained after a signal (also when the drain ran out of
  time: what was in flight is then lost, and a warning line says so);
- 1: a fatal error ended it (`failure()`): one line `segstream: error: <cause>`;
- 2: input found bad: raised before the work starts (commands/main.py prints it), or a source that
  turned out bad while running (a file cut short: `summary().source_errors`, one line each);
- 130: a second signal aborted it at once (also during start, e.g. while a model loads).

This is the only module of segstream that installs signal handlers. start() and drain() run on a
helper thread so that the main thread only waits: a signal is handled within a tenth of a second
whatever the application is doing (loading a model, waiting for Redis), and a second one aborts
at once without an exception thrown into the middle of the application's code.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, TextIO, TypeVar

if TYPE_CHECKING:
    from segstream.pipeline.run import RunSummary

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_ABORTED = 130

#: How often the main thread looks at the application and at the signals (seconds).
POLL = 0.1

T = TypeVar("T")


class Application(Protocol):
    """What `run_application` drives: one pipeline-running thing (a run, a serve, a worker)."""

    def start(self) -> None:
        """Load the model and start the work (the command attaches HTTP itself). Bad input raises."""

    def ended(self) -> bool:
        """True once it ended by itself: a file run finished, or a fatal error (see failure())."""

    def drain(self, timeout: float) -> bool:
        """Stop taking work and finish what is in flight, closing the sinks; past `timeout` s, abort.
        Also called after ended() (then it only closes). True when everything was finished in time."""

    def stop(self) -> None:
        """A first signal while start() runs: stop waiting (e.g. for Redis); start() then returns
        soon, without starting the work, and drain() follows."""

    def abort(self) -> None:
        """Stop now, from any thread (drain() may be running): discard what is in flight, close the
        sinks without waiting for Redis. Also called when start() has not finished."""

    def failure(self) -> str | None:
        """The fatal error that ended it, one line (exit 1); None when there was none."""

    def summary(self) -> "RunSummary":
        """Everything it ran, for the closing summary (segstream.pipeline.run.RunSummary)."""


class _Signals:
    """Counts SIGINT/SIGTERM: the first asks for a drain, the second for an abort."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.name = ""

    def handle(self, signum: int, _frame: Any) -> None:
        # Only flags here: printing from a handler can hit a stream the main thread is writing.
        if self.stop.is_set():
            self.abort.set()
        else:
            self.name = signal.Signals(signum).name
            self.stop.set()

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handlers for SIGINT and SIGTERM while inside; the previous ones restored after.
        Off the main thread (where Python allows no handlers) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.getsignal(sig) for sig in sigs}
        try:
            for sig in sigs:
                signal.signal(sig, self.handle)
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _on_helper(call: Callable[[], T], signals: _Signals, name: str,
               on_stop: Callable[[], None] | None = None) -> tuple[bool, T | None]:
    """Run `call` on a helper thread; (True, its result) when it returned, (False, None) when a
    second signal came first. Its exception is raised here. `on_stop`: called once when a first
    signal comes while `call` runs."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # re-raised on the main thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"lifecycle:{name}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL)  # with a timeout: the main thread stays free for the signal handlers
        if on_stop is not None and signals.stop.is_set():
            on_stop()
            on_stop = None
        if signals.abort.is_set():
            return False, None
    if "error" in box:
        raise box["error"]
    return True, box.get("result")


def _say(text: str, out: TextIO) -> None:
    print(f"segstream: {text}", file=out, flush=True)


def run_application(app: Application, shutdown_timeout: float, out: TextIO | None = None) -> int:
    """Start `app`, wait until it ends or a signal comes, drain within `shutdown_timeout` s, print
    the summary (to `out`, default stderr) and return the exit code (module docstring).

    An exception from start() (bad input found while loading: a model, an engine) is raised after
    the handlers are restored; commands/main.py turns it into one line and exit 2.
    """
    out = out or sys.stderr
    signals = _Signals()
    with signals.installed():
        started, _ = _on_helper(app.start, signals, "start", on_stop=app.stop)
        if not started:
            return _aborted(app, out, summary=False)
        while not app.ended() and not signals.stop.wait(POLL):
            pass
        if signals.stop.is_set() and not app.ended():
            _say(f"{signals.name or 'stop'} received: finishing what is in flight (up to {shutdown_timeout:g} s; "
                 "a second signal aborts)", out)
        finished, drained = _on_helper(lambda: app.drain(shutdown_timeout), signals, "drain")
        if not finished:
            return _aborted(app, out, summary=True)
    if not drained:
        _say(f"warning: not everything in flight was finished within shutdown_timeout ({shutdown_timeout:g} s)", out)
    summary = app.summary()
    print_summary(summary, out)
    failure = app.failure()
    if failure:
        _say(f"error: {failure.splitlines()[0] if failure.strip() else failure}", out)
        return EXIT_FAILURE
    for error in summary.source_errors:
        _say(f"error: {error}", out)
    return EXIT_BAD_INPUT if summary.source_errors else EXIT_OK


def _aborted(app: Application, out: TextIO, summary: bool) -> int:
    app.abort()
    _say("interrupted: a second signal, stopped without finishing what was in flight", out)
    if summary:
        try:
            print_summary(app.summary(), out)
        except Exception:  # an abort must end the process whatever state the application is in
            pass
    return EXIT_ABORTED


def print_summary(summary: "RunSummary", out: TextIO | None = None) -> None:
    """The closing summary: the model, one line per stream, the totals, the annotated videos."""
    out = out or sys.stderr
    model = summary.model_source + (" — UNTRAINED PLACEHOLDER, detections are meaningless" if summary.placeholder else "")
    print(f"model: {model}; engine: {summary.engine}", file=out)
    for t in summary.streams.values():
        drop = f", {t.dropped_total} dropped" if t.live else ""
        inferred = f" ({t.inferred} inferred, {t.gated} carried over by motion gating)" if t.gating else ""
        ended = f"; ended early: {t.error}" if t.error else ""  # its source failed (a file cut short)
        print(f"{t.stream_id}: {t.published} frames published{inferred}, {t.instances} instances{drop}, "
              f"{t.fps:.2f} frames/s, mean latency {t.mean_latency:.2f} s{ended}", file=out)
    stages = ", ".join(f"{s.name} {s.mean_ms():.1f} ms" for s in summary.stages)
    print(f"total: {summary.frames} frames in {summary.elapsed:.1f} s ({summary.fps:.2f} frames/s); per call: {stages}", file=out)
    if summary.corrupt_skipped:
        print(f"skipped {summary.corrupt_skipped} corrupt packet(s)", file=out)
    for path in summary.videos:
        print(f"annotated video: {path}", file=out)
    out.flush()
