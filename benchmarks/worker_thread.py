"""Run a timed function on a fresh worker thread, as the pipeline runs its engine.

torch's OpenMP team belongs to the calling thread. On a loaded 2-core machine the team of the
Python main thread ran the compact model ~30x slower than a worker thread's did, so timing an
engine on the main thread measures a configuration the pipeline never uses.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def on_worker_thread(fn: Callable[[], T]) -> T:
    """fn() run to completion on a new thread; its exception, if any, is raised here."""
    outcome: list = []

    def target() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed back to the caller's thread
            outcome.append((False, exc))

    worker = threading.Thread(target=target, name="timed-engine")
    worker.start()
    worker.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
