"""The streaming runtime: producers and stages run on worker threads, wired by bounded queues.

This module knows nothing about video or segmentation. A run is a chain

    producer a --lane a--\\
    producer b --lane b--- FairInbox --> stage 1 --q1--> stage 2 ... --> stage n
    producer c --lane c--/

Each producer is an iterable run on its own thread with its own bounded lane into the first
stage; each stage runs on its own thread and takes from its inbox. The edges (lanes, queues,
their block / drop-oldest policies and the round-robin take of the first stage) are in
pipeline/queues.py.

A stage may share the previous stage's thread (`same_thread`): it then processes that stage's
output of each call directly, with no queue between them.

Producers can be added and removed while the chain runs. With `keep_alive` the chain keeps
running without producers until `stop()`; otherwise it ends when the last producer ends.

Shutdown: `stop()` asks every producer to finish; an END marker follows the last item through
the chain; each stage flushes and passes it on, so everything already produced is processed.
`abort()` makes every stage discard what still reaches it. A stage that raises stops the run:
producers are asked to stop, the failed stage discards what still reaches it, the stages after
it finish what they hold, and `wait()` raises the first error.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from segstream.pipeline.queues import END, BoundedQueue, EdgePolicy, FairInbox


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


@dataclass
class StageStats:
    """Counters of one worker; busy is seconds spent inside process/flush."""

    name: str
    calls: int = 0
    items_in: int = 0
    items_out: int = 0
    busy: float = 0.0

    def mean_ms(self) -> float:
        return 1000.0 * self.busy / self.calls if self.calls else 0.0


@dataclass
class _Running:
    producer: Producer
    stopping: threading.Event
    thread: threading.Thread


class Chain:
    """Wires producers and stages with bounded queues and runs them.

    stages: the workers in order; queue_sizes: one capacity per stage inbox (the first one is
    the capacity of each producer lane added with `add_producer` without a policy); a later
    inbox may be given as an EdgePolicy (drop-oldest, light items) instead of a capacity.
    batchable: items the first stage may group (others are markers, see the module doc).
    """

    def __init__(
        self,
        producers: Sequence[Producer],
        stages: Sequence[Stage],
        queue_sizes: Sequence["int | EdgePolicy"],
        droppable: Callable[[Any], bool] | None = None,
        on_drop: Callable[[Any], None] | None = None,
        batchable: Callable[[Any], bool] = lambda item: True,
        max_batch_wait: float = 0.0,
        keep_alive: bool = False,
        same_thread: Sequence[int] = (),
    ) -> None:
        if len(queue_sizes) != len(stages):
            raise ValueError("one queue size per stage inbox")
        self.stages = list(stages)
        self.inbox = FairInbox(batchable, max_batch_wait)
        self.queues: list[Any] = [self.inbox] + [
            BoundedQueue.for_edge(size) if isinstance(size, EdgePolicy) else BoundedQueue(size)
            for size in queue_sizes[1:]]
        # Stages (by index) that run on the previous stage's thread, on its output as it comes
        # (their inbox stays unused): a cheap stage in front of another adds no queue, no thread
        # hop and no item in flight, and the first stage's fair take still governs what enters.
        self.same_thread = frozenset(same_thread)
        if 0 in self.same_thread:
            raise ValueError("the first stage has its own thread")
        self.stats = [StageStats(stage.name) for stage in self.stages]
        self.stopping = threading.Event()
        self.aborting = threading.Event()
        self.keep_alive = keep_alive
        self.errors: list[BaseException] = []
        # The error each producer ended with, by name: one entry per producer, freed by forget()
        # (a service adding and removing streams for months must not grow a list of them).
        self._producer_errors: dict[str, BaseException] = {}
        #: Called once with (producer name, exception) when a producer raises, on its thread.
        self.on_producer_error: Callable[[str, BaseException], None] | None = None
        first = queue_sizes[0]
        self._default_policy = EdgePolicy(
            first.capacity if isinstance(first, EdgePolicy) else first, "drop_oldest" if droppable else "block", droppable, on_drop
        )
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stage_threads: list[threading.Thread] = []
        self._pending = list(producers)
        self._adding = False

    # -- producers ---------------------------------------------------------------------------
    def add_producer(self, producer: Producer, policy: EdgePolicy | None = None) -> None:
        """Start feeding `producer`'s items into its own lane (now, or at start())."""
        with self._lock:
            if producer.name in self._running:
                raise KeyError(f"producer {producer.name!r} is running")
            self.inbox.add_lane(producer.name, policy or self._default_policy)
            self._producer_errors.pop(producer.name, None)  # a new stream by that name starts clean
            stopping = threading.Event()
            if self.stopping.is_set():
                stopping.set()
            thread = threading.Thread(target=self._run_producer, args=(producer, stopping),
                                      name=f"source:{producer.name}", daemon=True)
            self._running[producer.name] = _Running(producer, stopping, thread)
        thread.start()

    def remove_producer(self, name: str, grace: float = 10.0) -> bool:
        """Ask one producer to finish; its lane drains. False if it did not end within `grace`
        (it is then abandoned: whatever it still yields is discarded)."""
        with self._lock:
            running = self._running.get(name)
        if running is None:
            return True
        running.stopping.set()
        running.thread.join(grace)
        if running.thread.is_alive():
            self._abandon(name)
            return False
        return True

    def abandon_producers(self) -> list[str]:
        """Give up on producers still running (e.g. stuck in a network read) after stop():
        their lanes drain and the chain can end. Returns their names."""
        names = self.producers()
        for name in names:
            self._abandon(name)
        return names

    def _abandon(self, name: str) -> None:
        with self._lock:
            self._running.pop(name, None)
            last = not self._running and not self._adding
        self.inbox.finish_lane(name)
        if last and self._ends_without_producers():
            self.inbox.close()

    def _ends_without_producers(self) -> bool:
        """Whether the last producer ending ends the chain: always once stop() was asked."""
        return not self.keep_alive or self.stopping.is_set()

    def producers(self) -> list[str]:
        with self._lock:
            return list(self._running)

    @property
    def producer_errors(self) -> list[tuple[str, BaseException]]:
        """(producer name, the exception it ended with) of every producer that failed and was
        not forgotten, in the order they failed."""
        with self._lock:
            return list(self._producer_errors.items())

    def producer_error(self, name: str) -> BaseException | None:
        with self._lock:
            return self._producer_errors.get(name)

    def forget(self, name: str) -> None:
        """Drop what is kept about an ended producer (its error)."""
        with self._lock:
            if name not in self._running:
                self._producer_errors.pop(name, None)

    def _run_producer(self, producer: Producer, stopping: threading.Event) -> None:
        lane = self.inbox._lanes[producer.name]
        try:
            for item in producer.items(stopping):
                lane.put(item)
                if lane.closed:
                    break
        except BaseException as exc:  # kept for the run's summary; other producers go on
            with self._lock:
                self._producer_errors[producer.name] = exc
            if self.on_producer_error is not None:
                try:
                    self.on_producer_error(producer.name, exc)
                except Exception:  # reporting must never take the producer's bookkeeping down
                    pass
        finally:
            with self._lock:
                mine = self._running.get(producer.name)
                if mine is not None and mine.thread is threading.current_thread():
                    del self._running[producer.name]
                    last = not self._running and not self._adding
                else:  # abandoned earlier; the lane may already belong to a new producer
                    mine, last = None, False
            if mine is not None:
                self.inbox.finish_lane(producer.name)
            if last and self._ends_without_producers():
                self.inbox.close()

    # -- control -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask producers to finish early; what they already produced is still processed."""
        self.stopping.set()
        with self._lock:
            running = list(self._running.values())
            empty = not running
        for r in running:
            r.stopping.set()
        if empty:
            self.inbox.close()

    def abort(self) -> None:
        """Stop at once: stages discard what still reaches them, lanes refuse new items."""
        self.aborting.set()
        self.stop()
        with self._lock:
            names = list(self._running)
        for name in names:
            self.inbox.finish_lane(name, discard=True)
        self.inbox.close()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
        self.stop()

    def _run_stage(self, index: int) -> None:
        # This thread runs stage `index` and the stages after it that share its thread.
        run = [index]
        while run[-1] + 1 in self.same_thread:
            run.append(run[-1] + 1)
        stage = self.stages[index]
        inbox = self.queues[index]
        outbox = self.queues[run[-1] + 1] if run[-1] + 1 < len(self.queues) else None
        failed = False

        def step(i: int, items: list[Any], flush: bool = False) -> list[Any]:
            """Stage i's outputs for `items` (and, at the end, what it held back)."""
            stats = self.stats[i]
            start = time.perf_counter()
            outputs = list(self.stages[i].process(items)) if items else []
            if items:
                stats.calls += 1
                stats.items_in += len(items)
            if flush:
                outputs += list(self.stages[i].flush())
            stats.busy += time.perf_counter() - start
            stats.items_out += len(outputs)
            return outputs

        while True:
            items = inbox.get_many(max(1, stage.take))
            if items[0] is END:
                if not failed:
                    try:
                        held: list[Any] = []
                        for i in run:
                            held = step(i, held, flush=True)
                        if outbox is not None and held:
                            outbox.put_many(held)
                    except BaseException as exc:
                        self._fail(exc)
                if outbox is not None:
                    outbox.put(END, force=True)
                return
            if failed or self.aborting.is_set():
                continue  # keep draining so upstream never blocks on us
            try:
                for i in run:
                    items = step(i, items)
                if outbox is not None and items:
                    outbox.put_many(items)
            except BaseException as exc:
                failed = True
                self._fail(exc)

    def start(self) -> None:
        """Start the stage threads and the producers given to the constructor."""
        self._stage_threads = [
            threading.Thread(target=self._run_stage, args=(i,), name=f"stage:{s.name}", daemon=True)
            for i, s in enumerate(self.stages) if i not in self.same_thread
        ]
        for thread in self._stage_threads:
            thread.start()
        pending, self._pending = self._pending, []
        self._adding = True  # the first producer to end must not close the inbox before the rest join
        try:
            for producer in pending:
                self.add_producer(producer)
        finally:
            with self._lock:
                self._adding = False
                idle = not self._running
        if idle and not self.keep_alive:
            self.inbox.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for END to pass the last stage; False on timeout. Raises the first stage error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._stage_threads:
            while thread.is_alive():
                # A bare join() would hold off signal handlers on the main thread.
                thread.join(timeout=0.2)
                if deadline is not None and time.monotonic() > deadline:
                    return False
        if self.errors:
            raise self.errors[0]
        return True

    def done(self) -> bool:
        return bool(self._stage_threads) and not any(t.is_alive() for t in self._stage_threads)

    def run(self) -> None:
        """Run until every producer is done and END has passed the last stage.

        Raises the first stage error, if any. Producer errors are left in `producer_errors` (and passed to `on_producer_error`).
        """
        self.start()
        self.wait()

    def depths(self) -> dict[str, int]:
        """Items waiting on each edge: `lane:<producer>` and the inbox of each later stage."""
        out = {f"lane:{name}": n for name, n in self.inbox.depths().items()}
        for stage, queue in zip(self.stages[1:], self.queues[1:]):
            out[stage.name] = len(queue)
        return out
