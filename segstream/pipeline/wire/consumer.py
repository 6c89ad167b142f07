"""Consumer API: read a segstream stream from Redis as schema-v1 dicts, through quiet periods and outages.

    for message in Subscriber("redis://localhost:6379/0", "cam1", from_start=True):
        kind = entry_kind(message)          # "frame" | "eos" | "status" | "unknown"
        if kind == "eos": break
        if kind == "frame":
            for inst in message["instances"]:
                mask = decode_mask(inst["mask"])   # uint8 [height, width]

Every entry is validated against wire schema v1 (segstream/pipeline/wire/schema.py) before it is handed
out, so a consumer may index what the schema promises (`inst["mask"]["size"]`, ...) without checks. A
malformed entry (no `data`, not JSON, a field of the wrong type, a mask whose counts do not fit its
size or whose size is above `max_mask_pixels`) is logged once (its id and why) and skipped; in a
consumer group it is also copied to the dead-letter stream `<key>:dead` (its fields plus `reason` and
`entry`, the original id) and acknowledged in the same step, so no member ever receives it again.

Reads are blocking XREAD / XREADGROUP calls in bounded chunks (`read_block_ms`) on a socket whose
timeout is longer than the chunk, so a quiet stream never raises. When Redis goes away (restart,
network, SIGSTOP) the subscriber reconnects under the Redis link's one retry policy (equal-jitter
backoff, pipeline/wire/redis_link.py) for as long as it takes and continues after `last_id`, the last
entry id it handed out. One warning is logged (logger `segstream.consumer`) when an outage starts and
one when Redis answers again. A refusal of the credentials is not waited out: RedisLinkError at once.
Errors are RedisLinkError (one line for the user); SubscriberError, one of them, for bad arguments.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable, Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from segstream.pipeline.sources.locations import redact
from segstream.pipeline.wire.entries import decode_mask, entry_kind  # noqa: F401  (part of the consumer API)
from segstream.pipeline.wire.redis_link import (
    CONNECTION_ERRORS,
    RedisLinkError,
    RetryPolicy,
    answered_error,
    connect,
    reason,
    stream_key,
)
from segstream.pipeline.wire.schema import MAX_MASK_PIXELS, MalformedEntry, parse_entry

log = logging.getLogger("segstream.consumer")

ENTRY_ID = re.compile(r"^\d+(-\d+)?$")
#: Dead-letter streams keep about this many entries (oldest trimmed): a flood of bad entries stays bounded.
DEAD_LETTER_MAXLEN = 10_000
# Errors that mean "Redis is away for now" (refused, reset, timed out, LOADING after a restart).
_TRANSIENT = CONNECTION_ERRORS


class SubscriberError(RedisLinkError):
    """A subscriber cannot be made as asked (a bad entry id, a consumer without a group, ...)."""


def clock(unix_s: float) -> str:
    """HH:MM:SS local time, as the warning lines and status lines show it."""
    return time.strftime("%H:%M:%S", time.localtime(unix_s))


class Subscriber:
    """Iterates the entries of `<prefix><stream_id>` in order, waiting for new ones for as long as it takes.

    from_start: begin at the oldest entry still kept (else: only entries added from now on).
    after: begin right after this entry id (e.g. a `last_id` saved before the consumer's own restart);
        wins over from_start.
    block_ms: stop iterating after this long without a new entry (0: wait forever). Time spent
        waiting for an unreachable Redis counts as "without a new entry".
    group, consumer: read as member `consumer` of consumer group `group` (XREADGROUP). The group is
        created if missing (with MKSTREAM), starting at `after` if given, else at the beginning of the
        stream. Each entry is acknowledged (XACK) when the caller asks for the next one, so an entry
        being handled when the consumer dies is delivered again: at-least-once. On start (and after
        every reconnect) the member first re-reads its own pending entries, then new ones.
    wait: if Redis is unreachable at construction, wait for it instead of raising RedisLinkError.
    read_block_ms: length of one blocking read; socket_timeout (default read_block_ms + 3 s) must be
        longer, so that a quiet stream never times out the socket.
    backoff_initial, backoff_max: reconnect delays (seconds) of the retry policy (RetryPolicy: equal
        jitter, as the producer and the config's `redis.backoff_*`).
    max_mask_pixels: entries with a mask larger than this (height x width) are malformed.

    `last_id` is the id of the last entry handed out ("$" or "0-0" before the first one with nothing
    pinned yet); persist it and pass it back as `after` to resume. `unreachable_since` is the unix time
    Redis became unreachable, or None while it answers.
    """

    def __init__(self, url: str, stream_id: str, prefix: str = "segstream:", from_start: bool = False,
                 block_ms: int = 0, count: int = 64, *, after: str | None = None, group: str | None = None,
                 consumer: str | None = None, wait: bool = False, read_block_ms: int = 2000,
                 socket_timeout: float | None = None, connect_timeout: float = 5.0,
                 backoff_initial: float = 0.5, backoff_max: float = 5.0,
                 max_mask_pixels: int = MAX_MASK_PIXELS) -> None:
        if after is not None and not ENTRY_ID.match(after):
            raise SubscriberError(f"{after!r} is not a Redis stream entry id (like 1764471234567-0)")
        if consumer is not None and group is None:
            raise SubscriberError("a consumer name needs a consumer group")
        if socket_timeout is not None and socket_timeout * 1000 <= read_block_ms:
            raise SubscriberError(f"socket_timeout ({socket_timeout} s) must be longer than read_block_ms ({read_block_ms} ms)")
        self.url = url
        self.stream_id = stream_id
        self.key = stream_key(prefix, stream_id)
        self.dead_key = f"{self.key}:dead"
        self.max_mask_pixels = max_mask_pixels
        self.malformed = 0  # entries skipped because they did not validate
        self.block_ms = block_ms
        self.count = count
        self.group = group
        self.consumer = consumer or ("segstream" if group else None)
        self.read_block_ms = read_block_ms
        # "$" (non-group, from now on) is pinned to a concrete id once Redis answers; a group keeps its
        # own position in Redis, so last_id is only what this member handed out.
        self.last_id = after if after is not None else ("0-0" if from_start or group else "$")
        self.last_raw = ""
        self.unreachable_since: float | None = None
        self._unacked: str | None = None
        self._pending_from: str | None = "0" if group else None  # re-read own pending entries first
        self._setup_done = False
        self._closed = False
        if not wait:
            connect(url, timeout=connect_timeout).close()  # one clear RedisLinkError when unreachable or refused
        # The client itself never retries: the retry policy (below) decides, so an outage is noticed at once.
        try:
            self.client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout or read_block_ms / 1000 + 3.0,
                socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 0))
        except ValueError as exc:
            raise RedisLinkError(f"bad Redis URL {redact(url)} ({exc})") from None
        self._retry = RetryPolicy(backoff_initial, backoff_max)
        if not wait:
            try:
                self._call(self._setup, lambda error: False)
            except _TRANSIENT as exc:
                raise RedisLinkError(f"cannot reach Redis at {redact(url)} ({reason(exc)})") from None

    # -- Redis calls, each through the retry policy --------------------------------------------------

    def _call(self, do: Callable[[], Any], go_on: Callable[[BaseException], bool]) -> Any:
        """`do` through the retry policy; while Redis is away, retried as long as `go_on(error)` and not closed.
        Raises the transient error when it stops retrying, RedisLinkError when Redis refuses or answers an error."""
        stop = False

        def on_failure(error: BaseException) -> None:
            nonlocal stop
            stop = self._closed or not go_on(error)
            if not stop:
                self._on_failure(error)

        def wait(seconds: float) -> bool:  # True: stop retrying (closed, or the caller's time is up)
            if not stop:
                time.sleep(seconds)
            return stop

        try:
            result = self._retry.call(do, wait=wait, on_failure=on_failure)
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            raise answered_error(self.url, exc, f" on {self.key}") from None
        if self.unreachable_since is not None:
            log.warning("Redis at %s reachable again after %.1f s; continuing after entry %s",
                        redact(self.url), time.time() - self.unreachable_since, self.last_id)
            self.unreachable_since = None
        return result

    def _on_failure(self, error: BaseException) -> None:
        self._setup_done = False  # a restarted Redis may have lost the group: set it up again
        if self.group and self._pending_from is None:
            # Entries delivered to us while the reply was lost are in our pending list: re-read them.
            self._pending_from = self.last_id
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
            log.warning("Redis at %s unreachable since %s, retrying (%s)",
                        redact(self.url), clock(self.unreachable_since), reason(error))

    def _setup(self) -> None:
        if self._setup_done:
            return
        if self.group:
            start = "0" if self.last_id == "0-0" else self.last_id  # the beginning, or after `after`
            try:
                self.client.xgroup_create(self.key, self.group, id=start, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        elif self.last_id == "$":
            # Pin "now" to a concrete id so nothing added between two reads (or during an outage) is missed.
            info = self.client.xinfo_stream(self.key) if self.client.exists(self.key) else None
            last = info["last-generated-id"] if info else b"0-0"
            self.last_id = last.decode() if isinstance(last, bytes) else str(last)
        self._setup_done = True

    def _read_once(self, block_ms: int) -> list[tuple[Any, Any]]:
        self._setup()
        try:
            return self._read_entries(block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._setup_done = False  # the group vanished (deleted, or a Redis without persistence restarted)
            return []

    def _read_entries(self, block_ms: int) -> list[tuple[Any, Any]]:
        if self.group:
            if self._pending_from is not None:
                reply = self.client.xreadgroup(self.group, self.consumer, {self.key: self._pending_from},
                                               count=self.count)
                entries = reply[0][1] if reply else []
                if entries:
                    self._pending_from = _text(entries[-1][0])
                    return entries
                self._pending_from = None
            reply = self.client.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=self.count,
                                           block=block_ms)
        else:
            reply = self.client.xread({self.key: self.last_id}, count=self.count, block=block_ms)
        return reply[0][1] if reply else []

    def _ack_once(self) -> None:
        if self._unacked is not None:
            self.client.xack(self.key, self.group, self._unacked)
            self._unacked = None

    def ack(self) -> None:
        """Acknowledge the entry handed out last now (group mode; e.g. before stopping at EOS)."""
        if self.group:
            self._call(self._ack_once, lambda error: True)

    # -- iteration -----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        deadline = time.monotonic() + self.block_ms / 1000 if self.block_ms else None
        while not self._closed:
            block = self.read_block_ms
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                block = max(1, min(block, int(left * 1000)))
            try:
                entries = self._call(lambda: self._read_once(block),
                                     lambda error: deadline is None or time.monotonic() < deadline)
            except _TRANSIENT:
                return  # idle limit reached (or closed) while Redis was away
            for entry_id, fields in entries:
                self.last_id = _text(entry_id)
                if self.group:
                    self._unacked = self.last_id
                message = self._parse(fields)
                if isinstance(message, MalformedEntry):
                    try:
                        self._skip(self.last_id, fields, str(message))
                    except _TRANSIENT:
                        return  # closed while Redis was away: the entry stays pending and is judged again
                    continue
                if message is not None:
                    yield message
                    if deadline is not None:
                        deadline = time.monotonic() + self.block_ms / 1000
                if self.group:  # the caller asked for the next entry: this one is handled
                    try:
                        self.ack()
                    except _TRANSIENT:
                        return  # closed while Redis was away: the entry stays pending (at-least-once)

    def _parse(self, fields: dict | None) -> dict[str, Any] | MalformedEntry | None:
        """The entry's validated `data` object; None for an entry deleted while pending (no fields);
        the MalformedEntry (not raised) for one that does not validate."""
        if fields is None or not fields:
            return None
        try:
            message = parse_entry(fields, self.max_mask_pixels)
        except MalformedEntry as exc:
            return exc
        self.last_raw = _text(fields.get(b"data", fields.get("data")))
        return message

    def _skip(self, entry_id: str, fields: dict, reason: str) -> None:
        """Report a malformed entry once; in a group, dead-letter and acknowledge it in one step."""
        self.malformed += 1
        if not self.group:
            log.warning("skipped malformed entry %s of %s: %s", entry_id, self.key, reason)
            return

        def dead_letter() -> None:
            record = {**fields, "reason": reason, "entry": entry_id}
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(self.dead_key, record, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
            pipe.xack(self.key, self.group, entry_id)
            try:
                pipe.execute()
            except redis.ResponseError as exc:  # e.g. the dead-letter key is not a stream: still acknowledged
                log.warning("could not copy entry %s to %s (%s)", entry_id, self.dead_key, str(exc).splitlines()[0])
                try:
                    self.client.xack(self.key, self.group, entry_id)
                except redis.ResponseError:
                    pass  # NOGROUP: the group is gone, and with it the entry's pending state

        self._call(dead_letter, lambda error: True)
        self._unacked = None
        log.warning("skipped malformed entry %s of %s: %s (moved to %s)", entry_id, self.key, reason, self.dead_key)

    def read_all(self) -> list[dict[str, Any]]:
        """Every valid entry currently kept, oldest first (does not wait); malformed ones are logged."""
        out = []
        for entry_id, fields in self.client.xrange(self.key):
            message = self._parse(fields)
            if isinstance(message, MalformedEntry):
                self.malformed += 1
                log.warning("skipped malformed entry %s of %s: %s", _text(entry_id), self.key, message)
            elif message is not None:
                out.append(message)
        return out

    def close(self) -> None:
        """Stop: an iteration in progress (e.g. in another thread) ends after its current read."""
        self._closed = True
        self.client.close()


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
