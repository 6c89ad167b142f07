"""Redis sink: XADD one schema-v1 entry per frame (status and EOS entries too), optional Pub/Sub,
surviving Redis outages.

Entries wait in one outbox per stream and a writer thread sends them, round-robin over streams,
pipelined (up to `BATCH` entries a round trip). When Redis goes away the writer reconnects under
the Redis link's one retry policy (pipeline/wire/redis_link.py: equal jitter, `backoff_initial` up to
`backoff_max`) for as long as it takes (a refusal of the credentials too, logged once a minute):
- a file's outbox is small and `write` blocks while it is full, so the pipeline backs up to the
  decoder and nothing is lost; it resumes when Redis returns;
- a camera's outbox keeps the newest `outbox` frame entries; older ones are dropped, counted,
  and added to the `dropped` field of that camera's next published frame.
Exactly once: an XADD whose reply was lost with the connection may or may not have landed. After
reconnecting, the writer reads the newest entries of each stream it had in flight (XREVRANGE) and
resends only those whose exact `data` is not there. Every entry's data is unique (frame index,
capture time, status time), and this writer is the only one writing a stream, so an entry is
never published twice and never skipped. Entries are in order per stream.
Redis itself may lose the last second or two of entries it acknowledged when it is killed
(`appendfsync everysec` writes its log in the background): so the writer also keeps the entries
of the last `RECENT_SECONDS` that Redis acknowledged, and after an outage re-sends those that the
restarted Redis no longer has (they were lost, so this cannot duplicate them).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import redis

from segstream.pipeline.sinks import SinkError
from segstream.pipeline.sinks.outbox import Entry, Outbox, take_round_robin
from segstream.pipeline.sources.locations import redact
from segstream.pipeline.wire.entries import dumps
from segstream.pipeline.wire.redis_link import (
    CONNECTION_ERRORS,
    TROUBLE_LOG_INTERVAL,
    LogThrottle,
    RedisLinkError,
    RetryPolicy,
    answered_error,
    connect,
    reason,
    refused_access,
    stream_key,
)

if TYPE_CHECKING:  # consumers read the wire without torch: messages.py imports it
    from segstream.pipeline.messages import EndOfStream, FrameResult, StreamStatus

log = logging.getLogger(__name__)

BATCH = 64  # entries per pipelined round trip
REFUSED_LOG_INTERVAL = TROUBLE_LOG_INTERVAL  # seconds between log lines while Redis refuses our credentials
RECENT_SECONDS = 5.0  # acknowledged entries kept to repair what a killed Redis did not persist

# Fencing (fleet workers, see docs/scale-out.md): XADD only while the fence key still holds this
# writer's token, checked and written in one atomic step, so a writer that lost its lease while it
# was paused cannot add a single entry after the new owner took the stream.
FENCED_XADD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED stream owned by another writer') end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[3])
"""


class RedisStreamSink:
    """Publishes to `<prefix><stream-id>` with XADD MAXLEN ~ maxlen (and MINID ~ for retention).

    on_published(stream_id, message): after an entry landed (from the writer thread).
    on_dropped(stream_id, count): camera frames dropped from a full outbox.
    """

    def __init__(self, url: str, prefix: str = "segstream:", maxlen: int = 10000, pubsub: bool = False,
                 retention_seconds: float | None = None, outbox: int = 1000, file_outbox: int = 32,
                 backoff_initial: float = 0.5, backoff_max: float = 5.0,
                 on_published: Callable[[str, dict[str, Any]], None] | None = None,
                 on_dropped: Callable[[str, int], None] | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.maxlen = maxlen
        self.pubsub = pubsub
        self.retention = retention_seconds
        self.outbox_size = outbox
        self.file_outbox = file_outbox
        self.on_published = on_published
        self.on_dropped = on_dropped
        try:
            self.client = connect(url, retry=False)
        except RedisLinkError as exc:  # the sink's own error type: `run` and the services catch SinkError
            raise SinkError(str(exc)) from None
        self.entries = 0
        self.up = True
        self.down_since: float | None = None
        self.error: SinkError | None = None
        self._retry = RetryPolicy(backoff_initial, backoff_max)
        self._refusal_log = LogThrottle(REFUSED_LOG_INTERVAL)
        self._outboxes: dict[str, Outbox] = {}
        self._next = 0
        self._cond = threading.Condition()
        self._closing = False
        self._aborted = False
        self._busy = False
        self._trimmed: dict[str, float] = {}
        self._fences: dict[str, tuple[str, str]] = {}  # stream id -> (fence key, token)
        self._fenced_out: set[str] = set()  # streams whose writes were refused: entries dropped
        self.on_fenced: Callable[[str], None] | None = None
        self._fenced_xadd = self.client.register_script(FENCED_XADD)
        self._writer = threading.Thread(target=self._write_loop, name="redis-writer", daemon=True)
        self._writer.start()

    # -- the pipeline's side -----------------------------------------------------------------
    def write(self, result: FrameResult, message: dict[str, Any]) -> None:
        self._enqueue(Entry(result.frame.stream_id, message, droppable=result.frame.live), live=result.frame.live)

    def write_status(self, status: StreamStatus, message: dict[str, Any]) -> None:
        self._enqueue(Entry(status.stream_id, message, droppable=False), live=True)

    def end_stream(self, eos: EndOfStream, message: dict[str, Any]) -> None:
        self._enqueue(Entry(eos.stream_id, message, droppable=False), live=False)

    def fence(self, stream_id: str, key: str, token: int | str) -> None:
        """From now on, write `stream_id` only while GET `key` == `token` (atomically, in a Lua
        script). A refused write drops that stream's outbox and later entries, and calls
        on_fenced(stream_id) once: its owner lost the stream to another writer."""
        with self._cond:
            self._fences[stream_id] = (key, str(token))
            self._fenced_out.discard(stream_id)
            box = self._outboxes.get(stream_id)
            if box is not None:
                box.recent.clear()
                box.evicted = 0

    def forget(self, stream_id: str) -> None:
        """A stream that ended for good (a finished fleet job): drop its fence."""
        with self._cond:
            self._fences.pop(stream_id, None)
            self._fenced_out.discard(stream_id)

    def release(self, stream_id: str) -> bool:
        """Free a stream that is over: its outbox and trim time. False (nothing freed) while
        entries of it still wait, or while Redis might still lose acknowledged ones (try again)."""
        with self._cond:
            box = self._outboxes.get(stream_id)
            if box is not None:
                if box.entries or (box.recent and time.monotonic() - box.recent[-1].acked <= RECENT_SECONDS):
                    return False
                del self._outboxes[stream_id]
            self._trimmed.pop(stream_key(self.prefix, stream_id), None)
            return True

    def _enqueue(self, entry: Entry, live: bool) -> None:
        dropped = 0
        with self._cond:
            if self.error is not None:
                raise self.error
            if entry.stream_id in self._fenced_out:
                return
            box = self._outboxes.get(entry.stream_id)
            if box is None:
                box = self._outboxes[entry.stream_id] = Outbox(self.outbox_size if live else self.file_outbox, live)
            if box.live:
                while len(box.entries) >= box.capacity and box.evict_oldest_frame():
                    dropped += 1
            else:
                while len(box.entries) >= box.capacity and not self._aborted:
                    self._cond.wait(0.5)  # backpressure: the decoder waits for Redis
            if self._aborted:
                return
            box.entries.append(entry)
            self._cond.notify_all()
        if dropped and self.on_dropped is not None:
            self.on_dropped(entry.stream_id, dropped)

    def pending(self) -> int:
        """Entries not yet on Redis."""
        with self._cond:
            return sum(len(b.entries) for b in self._outboxes.values()) + (1 if self._busy else 0)

    def close(self, timeout: float | None = None) -> bool:
        """Publish what waits (for up to `timeout` s; None: until done or abort()), then stop.
        Returns False when entries were left unpublished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._busy or any(b.entries for b in self._outboxes.values())) and not self._aborted:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(0.2 if left is None else min(0.2, left))
            left_over = sum(len(b.entries) for b in self._outboxes.values())
            self._aborted = True
            self._cond.notify_all()
        self._writer.join(5)
        self.client.close()
        if left_over:
            log.error("Redis at %s: %d entries not published (shutdown while Redis was unreachable)",
                      redact(self.url), left_over)
        return left_over == 0

    def abort(self) -> None:
        """Stop waiting for Redis now (a second Ctrl-C)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    # -- the writer thread -------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._aborted and not any(b.entries for b in self._outboxes.values()):
                    self._cond.wait()
                if self._aborted:
                    return
                batch = take_round_robin(self._outboxes.values(), BATCH)
                for entry in batch:
                    if not entry.data:
                        self._outboxes[entry.stream_id].count_evicted_in(entry)
                        entry.data = dumps(entry.message)
                self._busy = True
            try:
                refused = self._send(batch)
                self._done([e for e in batch if e.stream_id not in refused])
                if refused:
                    self._fence_out(refused)
            except CONNECTION_ERRORS as exc:
                self._outage(exc)
                self._recover(batch)
            except redis.RedisError as exc:  # Redis answered with an error: not an outage
                with self._cond:
                    self.error = SinkError(f"publishing to Redis at {redact(self.url)} failed ({exc})")
                    self._aborted = True
                    self._busy = False
                    self._cond.notify_all()
                return
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _send(self, batch: list[Entry]) -> set[str]:
        """XADD the batch in one round trip; returns the streams whose fence refused the write."""
        pipe = self.client.pipeline(transaction=False)
        now = time.time()
        positions: list[tuple[int, Entry]] = []
        for entry in batch:
            key = stream_key(self.prefix, entry.stream_id)
            positions.append((len(pipe.command_stack), entry))
            fence = self._fences.get(entry.stream_id)
            if fence is not None:
                self._fenced_xadd(keys=[fence[0], key], args=[fence[1], self.maxlen, entry.data], client=pipe)
            else:
                pipe.xadd(key, {"data": entry.data}, maxlen=self.maxlen, approximate=True)
            if self.pubsub:
                pipe.publish(key, entry.data)
            if self.retention and now - self._trimmed.get(key, 0.0) > 1.0:
                self._trimmed[key] = now
                pipe.xtrim(key, minid=f"{int((now - self.retention) * 1000)}-0", approximate=True)
        if not self._fences:
            pipe.execute()
            return set()
        results = pipe.execute(raise_on_error=False)
        refused: set[str] = set()
        for position, entry in positions:
            result = results[position]
            if isinstance(result, redis.ResponseError):
                if str(result).startswith("FENCED"):
                    refused.add(entry.stream_id)
                else:
                    raise result
        return refused

    def _fence_out(self, refused: set[str]) -> None:
        with self._cond:
            for stream_id in refused:
                box = self._outboxes.get(stream_id)
                if box is not None:
                    box.entries.clear()
                    box.recent.clear()
                self._fences.pop(stream_id, None)
                self._fenced_out.add(stream_id)
            self._cond.notify_all()
        for stream_id in refused:
            log.warning("stream %s is owned by another writer now (fencing token refused); its results are dropped here",
                        stream_id)
            if self.on_fenced is not None:
                self.on_fenced(stream_id)

    def _done(self, published: list[Entry]) -> None:
        now = time.monotonic()
        first_time = [e for e in published if not e.acked]
        with self._cond:
            for entry in published:
                box = self._outboxes[entry.stream_id]
                box.entries.remove(entry)
                entry.acked = now
                box.remember(entry, now, RECENT_SECONDS, 4 * BATCH)
        self.entries += len(first_time)
        if self.on_published is not None:
            for entry in first_time:  # an entry re-sent after Redis lost it was counted already
                self.on_published(entry.stream_id, entry.message)

    def _outage(self, exc: BaseException) -> None:
        """Reconnect under the retry policy until PING answers (or abort)."""
        self.up = False
        self.down_since = time.time()
        log.warning("Redis at %s unreachable (%s); results wait in the outbox, retrying", redact(self.url), reason(exc))

        def ping() -> None:
            self.client.connection_pool.disconnect()
            self.client.ping()

        def failed(error: BaseException) -> None:  # away, LOADING its append-only file, or refusing us
            if refused_access(error) and self._refusal_log.due():  # credentials changed: say so, keep trying
                log.error("%s; results wait in the outbox, retrying", answered_error(self.url, error))

        try:
            # Any error PING gets is waited out: what the writer holds must not be lost to a blip.
            self._retry.call(ping, wait=self._wait_unless_aborted, on_failure=failed, retry_refusals=True,
                             errors=(redis.RedisError, OSError))
        except (redis.RedisError, OSError):
            return  # aborted while Redis was away
        log.warning("Redis at %s reachable again after %.1f s", redact(self.url), time.time() - self.down_since)
        self.up = True
        self.down_since = None

    def _wait_unless_aborted(self, seconds: float) -> bool:
        """Wait `seconds` between reconnect attempts, ended early by abort(); True when aborted."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._aborted:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._aborted

    def _recover(self, batch: list[Entry]) -> None:
        """After an outage: which in-flight entries landed, and which acknowledged ones Redis lost."""
        in_flight = collections.defaultdict(list)
        for entry in batch:
            in_flight[entry.stream_id].append(entry)
        with self._cond:
            streams = {sid for sid, box in self._outboxes.items() if box.recent} | set(in_flight)
        for stream_id in streams:
            box = self._outboxes.get(stream_id)
            if box is None:  # released meanwhile: nothing of it was in flight
                continue
            with self._cond:
                recent = list(box.recent)
            count = len(recent) + len(in_flight[stream_id])
            while True:
                try:
                    newest = self.client.xrevrange(stream_key(self.prefix, stream_id), count=count)
                    break
                except CONNECTION_ERRORS as exc:
                    with self._cond:
                        if self._aborted:
                            return
                    self._outage(exc)
            present = set()
            for _, fields in newest:
                raw = fields.get(b"data", b"")
                present.add(raw.decode() if isinstance(raw, bytes) else raw)
            lost = [e for e in recent if e.data not in present]
            if lost:
                log.warning("Redis lost %d acknowledged entries of %s when it went down; publishing them again",
                            len(lost), stream_id)
                with self._cond:
                    for entry in lost:
                        box.recent.remove(entry)
                    box.entries.extendleft(reversed(lost))  # before the in-flight ones, in order
            self._done([e for e in in_flight[stream_id] if e.data in present])
