"""The streaming runtime: producers, stages and bounded queues between worker threads.

This module knows nothing about video or segmentation. A run is a chain

    producers --q0--> stage 1 --q1--> stage 2 ... --> stage n

Each producer is an iterable run on its own thread; each stage runs on its own thread, takes
items from its inbox, and yields items for its outbox. PyAV decoding and torch release the GIL,
so the threads overlap.

Queue policy: a full queue blocks its producer (backpressure, nothing lost), except for items the
`droppable` predicate accepts: those evict the oldest droppable item already waiting, so a slow
consumer sees the newest items and latency stays bounded. Evictions are reported to `on_drop`.

Shutdown: when every producer has finished (or `stop()` was called, which asks producers to
finish early), an END marker follows the last item through the chain; each stage flushes and
passes it on, so everything already produced is processed. A stage that raises stops the run:
producers are asked to stop, the failed stage discards what still reaches it, the stages after it
finish what they hold, and `run()` raises the first error.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence


class Stage(Protocol):
    """One step of the chain. `process` gets 1..take items in arrival order."""

    name: str
    take: int

    def process(self, items: list[Any]) -> Iterable[Any]: ...

    def flush(self) -> Iterable[Any]:
        """Called once after the last item; yields whatever is still held back."""
        ...


class Producer(Protocol):
    """A source of items, iterated on its own thread until exhausted or asked to stop."""

    name: str

    def items(self, stopping: threading.Event) -> Iterator[Any]: ...


class _End:
    def __repr__(self) -> str:
        return "END"


END = _End()


class BoundedQueue:
    """FIFO of at most `maxsize` items with the block / drop-oldest policy described above."""

    def __init__(
        self,
        maxsize: int,
        droppable: Callable[[Any], bool] | None = None,
        on_drop: Callable[[Any], None] | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._droppable = droppable
        self._on_drop = on_drop
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: Any, force: bool = False) -> None:
        """Append, blocking while full. force=True never blocks (for END markers)."""
        evicted = None
        with self._cond:
            if not force and len(self._items) >= self.maxsize and self._droppable and self._droppable(item):
                evicted = self._evict_oldest_droppable()
            while not force and len(self._items) >= self.maxsize:
                self._cond.wait()
            self._items.append(item)
            self._cond.notify_all()
        if evicted is not None and self._on_drop is not None:
            self._on_drop(evicted)

    def _evict_oldest_droppable(self) -> Any:
        for i, queued in enumerate(self._items):
            if queued is not END and self._droppable(queued):
                del self._items[i]
                self.dropped += 1
                return queued
        return None

    def get_many(self, limit: int) -> list[Any]:
        """Block for the first item, then take up to `limit` without waiting. END comes alone."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            out = [self._items.popleft()]
            while out[-1] is not END and len(out) < limit and self._items and self._items[0] is not END:
                out.append(self._items.popleft())
            self._cond.notify_all()
            return out


@dataclass
class StageStats:
    """Counters of one worker; busy is seconds spent inside process/flush."""

    name: str
    calls: int = 0
    items_in: int = 0
    items_out: int = 0
    busy: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def mean_ms(self) -> float:
        return 1000.0 * self.busy / self.calls if self.calls else 0.0


class Chain:
    """Wires producers and stages with bounded queues and runs them to completion."""

    def __init__(
        self,
        producers: Sequence[Producer],
        stages: Sequence[Stage],
        queue_sizes: Sequence[int],
        droppable: Callable[[Any], bool] | None = None,
        on_drop: Callable[[Any], None] | None = None,
    ) -> None:
        if len(queue_sizes) != len(stages):
            raise ValueError("one queue size per stage inbox")
        self.producers = list(producers)
        self.stages = list(stages)
        # Only the first queue drops: later queues hold work already paid for.
        self.queues = [
            BoundedQueue(size, droppable if i == 0 else None, on_drop if i == 0 else None)
            for i, size in enumerate(queue_sizes)
        ]
        self.stats = [StageStats(stage.name) for stage in self.stages]
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.producer_errors: list[tuple[str, BaseException]] = []
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Ask producers to finish early; what they already produced is still processed."""
        self.stopping.set()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
        self.stopping.set()

    def _run_producer(self, producer: Producer) -> None:
        try:
            for item in producer.items(self.stopping):
                self.queues[0].put(item)
        except BaseException as exc:  # reported after the run; other producers go on
            with self._lock:
                self.producer_errors.append((producer.name, exc))

    def _run_stage(self, index: int) -> None:
        stage, stats = self.stages[index], self.stats[index]
        inbox = self.queues[index]
        outbox = self.queues[index + 1] if index + 1 < len(self.queues) else None
        failed = False

        def emit(outputs: Iterable[Any]) -> None:
            for out in outputs:
                stats.items_out += 1
                if outbox is not None:
                    outbox.put(out)

        while True:
            items = inbox.get_many(max(1, stage.take))
            if items[0] is END:
                if not failed:
                    try:
                        start = time.perf_counter()
                        emit(list(stage.flush()))
                        stats.busy += time.perf_counter() - start
                    except BaseException as exc:
                        self._fail(exc)
                if outbox is not None:
                    outbox.put(END, force=True)
                return
            if failed:
                continue  # keep draining so upstream never blocks on us
            try:
                start = time.perf_counter()
                outputs = list(stage.process(items))
                stats.busy += time.perf_counter() - start
                stats.calls += 1
                stats.items_in += len(items)
                emit(outputs)
            except BaseException as exc:
                failed = True
                self._fail(exc)

    def run(self) -> None:
        """Run until every producer is done and END has passed the last stage.

        Raises the first stage error, if any. Producer errors are left in `producer_errors`.
        """
        stage_threads = [
            threading.Thread(target=self._run_stage, args=(i,), name=f"stage:{s.name}", daemon=True)
            for i, s in enumerate(self.stages)
        ]
        producer_threads = [
            threading.Thread(target=self._run_producer, args=(p,), name=f"source:{p.name}", daemon=True)
            for p in self.producers
        ]
        for thread in stage_threads + producer_threads:
            thread.start()
        for thread in producer_threads:
            _join_interruptibly(thread)
        self.queues[0].put(END, force=True)
        for thread in stage_threads:
            _join_interruptibly(thread)
        if self.errors:
            raise self.errors[0]


def _join_interruptibly(thread: threading.Thread) -> None:
    # A bare join() would hold off signal handlers on the main thread until the thread ends.
    while thread.is_alive():
        thread.join(timeout=0.2)
