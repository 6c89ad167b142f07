"""The runtime's edges: bounded queues with a declared full-queue policy, and the fair inbox.

    producer a --lane a--\\
    producer b --lane b--- FairInbox --> stage 1 --BoundedQueue--> stage 2 ...
    producer c --lane c--/

Each producer has its own bounded lane whose policy is declared on that edge (`EdgePolicy`):
`block` (backpressure to the producer, nothing lost) or `drop_oldest` (a full lane evicts its
oldest droppable item, so a slow consumer sees the newest items and latency stays bounded;
evictions are reported to the edge's `on_drop`). The first stage takes from the lanes
round-robin, one item per lane in turn, up to `take` items, waiting at most `max_batch_wait` for
a fuller group: so no producer starves another, a blocked lane never holds up the others, and
with N busy producers each gets at least 1/N of the first stage. Items that are not `batchable`
(markers) end their lane's share of a group, so per-lane order is kept by a stage that emits the
grouped items before the markers. `END` follows the last item through every edge.

Nothing here knows about threads other than the condition each queue waits on (the chain that
runs the workers is pipeline/runtime.py), nor about video.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal


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

    def offer(self, item: Any) -> bool:
        """Append without ever waiting: when full, the oldest droppable item waiting is evicted
        (passed to on_drop); with none to evict, `item` itself is refused (False)."""
        evicted = None
        with self._cond:
            if self.closed:
                return False
            if self._full_for(item):
                evicted = self._evict_oldest_droppable(item) if self._droppable else None
                if evicted is None:
                    return False
            self._append(item)
            self._cond.notify_all()
        if evicted is not None and self._on_drop is not None:
            self._on_drop(evicted)
        return True

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

    def discard(self, which: Callable[[Any], bool]) -> int:
        """Remove every waiting item `which` says (never END); returns how many went."""
        with self._cond:
            kept = [item for item in self._items if item is END or not which(item)]
            gone = len(self._items) - len(kept)
            self._items.clear()
            self._light_count = 0
            for item in kept:
                self._append(item)
            self._cond.notify_all()
            return gone

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
