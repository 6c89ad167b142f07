"""The Redis sink's outboxes: the entries of one stream waiting for Redis, and what was acknowledged lately.

A file's outbox is small and makes the pipeline wait when full (backpressure to the decoder); a
camera's keeps the newest frame entries, dropping (and counting) the oldest, so its latency stays
bounded while Redis is away. Entries are taken round-robin over streams, so one busy stream does
not hold up another. No Redis here: pipeline/sinks/redis_stream.py sends them and does the locking.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(eq=False)  # entries are removed by identity
class Entry:
    """One wire entry of a stream (a frame, a status or an end of stream) on its way to Redis."""

    stream_id: str
    message: dict[str, Any]
    droppable: bool  # a camera's frame entry (status and EOS entries are never dropped)
    data: str = ""  # the exact JSON sent, fixed at the first send
    acked: float = 0.0  # monotonic time Redis acknowledged it (0: not yet)


class Outbox:
    """One stream's waiting entries. Files block when full; cameras evict their oldest frame."""

    def __init__(self, capacity: int, live: bool) -> None:
        self.capacity = capacity
        self.live = live
        self.entries: collections.deque[Entry] = collections.deque()
        self.evicted = 0  # frames dropped since the last published frame of this stream
        self.recent: collections.deque[Entry] = collections.deque()  # acknowledged, newest last

    def evict_oldest_frame(self) -> bool:
        """Drop the oldest frame entry not sent yet; False when there is none to drop."""
        for i, queued in enumerate(self.entries):
            if queued.droppable and not queued.data:
                del self.entries[i]
                # It and the frames it counted as dropped before it: the next published frame says so.
                self.evicted += 1 + int(queued.message.get("dropped", 0))
                return True
        return False

    def count_evicted_in(self, entry: Entry) -> None:
        """Before an entry's first send: a frame carries the frames evicted before it in `dropped`."""
        if entry.droppable and self.evicted and "dropped" in entry.message:
            entry.message["dropped"] += self.evicted
            self.evicted = 0

    def remember(self, entry: Entry, now: float, seconds: float, most: int) -> None:
        """Keep an acknowledged entry for `seconds` (at most `most` of them): a killed Redis may lose it."""
        self.recent.append(entry)
        while self.recent and (now - self.recent[0].acked > seconds or len(self.recent) > most):
            self.recent.popleft()


def take_round_robin(boxes: Iterable[Outbox], limit: int) -> list[Entry]:
    """Up to `limit` entries, round-robin over the outboxes, left at the head of their outboxes."""
    waiting = [b for b in boxes if b.entries]
    taken: list[Entry] = []
    depth = 0
    while len(taken) < limit:
        added = False
        for box in waiting:
            if depth < len(box.entries) and len(taken) < limit:
                taken.append(box.entries[depth])
                added = True
        if not added:
            break
        depth += 1
    return taken
