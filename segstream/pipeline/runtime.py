"""The streaming runtime: producers, stages and bounded queues between worker threads.

This module knows nothing about video or segmentation. A run is a chain

    producer a --lane a--\\
    producer b --lane b--- FairInbox --> stage 1 --q1--> stage 2 ... --> stage n
    producer c --lane c--/

Each producer is an iterable run on its own thread and has its own bounded lane whose policy
is declared on that edge (`EdgePolicy`): `block` (backpressure to the producer, nothing lost) or
`drop_oldest` (a full lane evicts its oldest droppable item, so a slow consumer sees the newest
items and latency stays bounded; evictions are reported to the edge's `on_drop`). The first
stage takes from the lanes round-robin, one item per lane in turn, up to `take` items, waiting
at most `max_batch_wait` for a fuller group: so no producer starves another, a blocked lane
never holds up the others, and with N busy producers each gets at least 1/N of the first stage.
Items that are not `batchable` (markers) end their lane's share of a group, so per-lane order
is kept by a stage that emits the grouped items before the markers.

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

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol, Sequence


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


@dataclass(frozen=True)
class EdgePolicy:
    """How one bounded edge behaves when full.

    when_full: "block" (the producer waits) or "drop_oldest" (the oldest droppable item waiting
    is evicted and passed to on_drop). droppable: which items may be evicted (markers never are).
    light: items that do not count against `capacity` (small markers that must never wait for
    room the heavy items compete for); at most `light_capacity` of them wait at once.
    owner: for a queue that several producers share (drop_oldest): the eviction takes the newest
    waiting droppable item of the owner with the most of them waiting (the incoming item
    counted), so one busy producer loses its own items, not another's, and still gets its turn.
    """

    capacity: int
    when_full: Literal["block", "drop_oldest"] = "block"
    droppable: Callable[[Any], bool] | None = None
    on_drop: Callable[[Any], None] | None = None
    light: Callable[[Any], bool] | None = None
    light_capacity: int = 0
    owner: Callable[[Any], Any] | None = None


class BoundedQueue:
    """FIFO of at most `maxsize` items with the block / drop-oldest policy described above."""

    def __init__(
        self,
        maxsize: int,
        droppable: Callable[[Any], bool] | None = None,
        on_drop: Callable[[Any], None] | None = None,
        condition: threading.Condition | None = None,
        light: Callable[[Any], bool] | None = None,
        light_capacity: int = 0,
        owner: Callable[[Any], Any] | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._droppable = droppable
        self._on_drop = on_drop
        self._light = light
        self.light_capacity = light_capacity
        self._owner = owner
        self._light_count = 0  # light items waiting (kept only when `light` is given)
        self._items: collections.deque[Any] = collections.deque()
        self._cond = condition or threading.Condition()
        self.dropped = 0
        self.closed = False  # no more items will be accepted (a removed producer's late items)

    @classmethod
    def for_edge(cls, policy: EdgePolicy, condition: threading.Condition | None = None) -> "BoundedQueue":
        droppable = None
        if policy.when_full == "drop_oldest":
            droppable = policy.droppable or (lambda item: True)
        return cls(policy.capacity, droppable, policy.on_drop, condition, policy.light, policy.light_capacity,
                   policy.owner)

    def __len__(self) -> int:
        return len(self._items)

    def _is_light(self, item: Any) -> bool:
        return self._light is not None and item is not END and self._light(item)

    def _full_for(self, item: Any) -> bool:
        """Whether `item` has to wait: a light item only for the light items' own bound."""
        if self._light is None:
            return len(self._items) >= self.maxsize
        if self._is_light(item):
            return self._light_count >= self.light_capacity
        return len(self._items) - self._light_count >= self.maxsize

    def _append(self, item: Any) -> None:
        self._items.append(item)
        if self._is_light(item):
            self._light_count += 1

    def _popleft(self) -> Any:
        item = self._items.popleft()
        if self._is_light(item):
            self._light_count -= 1
        return item

    def put(self, item: Any, force: bool = False) -> None:
        """Append, blocking while full. force=True never blocks (for END markers)."""
        evicted = None
        with self._cond:
            if self.closed:
                return
            if not force and self._full_for(item) and self._droppable and self._droppable(item):
                evicted = self._evict_oldest_droppable(item)
            while not force and self._full_for(item) and not self.closed:
                self._cond.wait()
            if self.closed:
                return
            self._append(item)
            self._cond.notify_all()
        if evicted is not None and self._on_drop is not None:
            self._on_drop(evicted)

    def put_many(self, items: list[Any]) -> None:
        """Append all of `items` (blocking while full, never evicting), waking the consumer once
        they are all in when they fit: a stage's output reaches the next stage as one group, so
        a batching stage after it sees a full batch, not the first frame of one."""
        if self._droppable is not None:
            for item in items:
                self.put(item)
            return
        with self._cond:
            for item in items:
                while self._full_for(item) and not self.closed:
                    self._cond.notify_all()
                    self._cond.wait()
                if self.closed:
                    return
                self._append(item)
            self._cond.notify_all()

    def _evict_oldest_droppable(self, incoming: Any = None) -> Any:
        order = range(len(self._items))
        victim = None
        if self._owner is not None:
            waiting = collections.Counter(self._owner(q) for q in self._items if q is not END and self._droppable(q))
            if waiting:
                waiting[self._owner(incoming)] += 1
                most = max(waiting.values())
                # The owner with the most waiting (the oldest such on a tie) loses its newest
                # waiting item: its oldest keeps its place in the line, so a producer faster than
                # the others still gets its turn (evicting its oldest would starve it).
                victim = next((self._owner(q) for q in self._items
                               if q is not END and self._droppable(q) and waiting[self._owner(q)] == most), None)
                order = range(len(self._items) - 1, -1, -1)
        for i in order:
            queued = self._items[i]
            if queued is not END and self._droppable(queued) and (victim is None or self._owner(queued) == victim):
                del self._items[i]
                if self._is_light(queued):
                    self._light_count -= 1
                self.dropped += 1
                return queued
        return None

    def get_many(self, limit: int) -> list[Any]:
        """Block for the first item, then take up to `limit` without waiting. END comes alone."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            out = [self._popleft()]
            while out[-1] is not END and len(out) < limit and self._items and self._items[0] is not END:
                out.append(self._popleft())
            self._cond.notify_all()
            return out

    def close(self) -> None:
        """Refuse further items and wake a producer blocked on a full queue."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class FairInbox:
    """The first stage's inbox: one lane per producer, taken round-robin (see the module doc)."""

    def __init__(self, batchable: Callable[[Any], bool], max_wait: float = 0.0) -> None:
        self._cond = threading.Condition()
        self._lanes: dict[str, BoundedQueue] = {}
        self._finished: set[str] = set()
        self._next = 0
        self._closing = False
        self.batchable = batchable
        self.max_wait = max_wait

    def add_lane(self, name: str, policy: EdgePolicy) -> BoundedQueue:
        with self._cond:
            if name in self._lanes:
                raise KeyError(f"lane {name!r} exists")
            lane = BoundedQueue.for_edge(policy, self._cond)
            self._lanes[name] = lane
            self._finished.discard(name)
            return lane

    def finish_lane(self, name: str, discard: bool = False) -> None:
        """The lane's producer is done: the lane goes once emptied (at once with discard)."""
        with self._cond:
            lane = self._lanes.get(name)
            if lane is None:
                return
            lane.closed = True
            if discard:
                lane._items.clear()
            self._finished.add(name)
            self._drop_finished()
            self._cond.notify_all()

    def close(self) -> None:
        """No lanes will be added: END follows once every lane is finished and empty."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def depths(self) -> dict[str, int]:
        with self._cond:
            return {name: len(lane) for name, lane in self._lanes.items()}

    def _drop_finished(self) -> None:
        for name in [n for n in self._finished if not self._lanes[n]._items]:
            del self._lanes[name]
            self._finished.discard(name)

    def _ended(self) -> bool:
        return self._closing and not self._lanes

    def get_many(self, limit: int) -> list[Any]:
        """Up to `limit` items round-robin over the lanes; [END] once closed and drained."""
        with self._cond:
            while not any(lane._items for lane in self._lanes.values()):
                if self._ended():
                    return [END]
                self._cond.wait()
            out = self._take_round(limit)
            if self.max_wait > 0 and len(out) < limit and all(self.batchable(i) for i in out):
                deadline = time.monotonic() + self.max_wait
                while len(out) < limit:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if not any(lane._items for lane in self._lanes.values()):
                        self._cond.wait(left)
                        continue
                    more = self._take_round(limit - len(out))
                    out.extend(more)
                    if not all(self.batchable(i) for i in more):
                        break
            self._drop_finished()
            self._cond.notify_all()
            return out

    def _take_round(self, limit: int) -> list[Any]:
        """Round-robin from the lane after the one served last; a marker ends its lane's share."""
        names = list(self._lanes)
        if not names:
            return []
        start = self._next % len(names)
        order = names[start:] + names[:start]
        out: list[Any] = []
        stopped: set[str] = set()
        progress = True
        while len(out) < limit and progress:
            progress = False
            for name in order:
                if len(out) >= limit:
                    break
                lane = self._lanes[name]
                if name in stopped or not lane._items:
                    continue
                item = lane._items.popleft()
                out.append(item)
                progress = True
                self._next = names.index(name) + 1
                if not self.batchable(item):
                    stopped.add(name)
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
