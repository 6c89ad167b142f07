"""The streams added over the API, remembered in Redis so a restarted service picks them up again.

Kept in one hash, `<prefix>service:streams`: field = stream id, value = the stream's spec as JSON
(what was POSTed, validated). Config streams are not written there (the config file already
remembers them). A file stream is forgotten once it has ended: replaying it after a restart would
publish its frames twice.

Writes never block an HTTP request: they go to a pending map that a background thread flushes to
Redis, retrying while Redis is away, in order per stream (the last word on a stream wins). The
same thread reads the hash once at start (again and again until Redis answers) and hands the
remembered specs to `on_loaded`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable

import redis

log = logging.getLogger("segstream.service")

TROUBLE_LOG_INTERVAL = 60.0  # seconds between repeated log lines while Redis keeps failing the book


class StreamBook:
    """Remembered API streams. remember()/forget() return at once; Redis is written in the background."""

    def __init__(self, url: str, prefix: str, retry_interval: float = 1.0) -> None:
        self.key = f"{prefix}service:streams"
        self._url = url
        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._pending: dict[str, str | None] = {}  # id -> spec JSON to write, or None to delete
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._retry = retry_interval
        self._thread: threading.Thread | None = None
        self.loaded = threading.Event()
        self.trouble: str | None = None  # why Redis did not take the last read or write; None: it did
        self._trouble_logged = 0.0

    def start(self, on_loaded: Callable[[list[dict[str, Any]]], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(on_loaded,), name="service:stream-book", daemon=True)
        self._thread.start()

    def remember(self, spec: dict[str, Any]) -> None:
        with self._lock:
            self._pending[spec["id"]] = json.dumps(spec, separators=(",", ":"), sort_keys=True)
        self._wake.set()

    def forget(self, stream_id: str) -> None:
        with self._lock:
            self._pending[stream_id] = None
        self._wake.set()

    @property
    def unsaved(self) -> int:
        """Changes not yet on Redis (Redis away)."""
        with self._lock:
            return len(self._pending)

    def _run(self, on_loaded: Callable[[list[dict[str, Any]]], None]) -> None:
        while not self._stop.is_set():
            if not self.loaded.is_set():
                specs = self._read()
                if specs is not None:
                    with self._lock:  # deleted over the API before Redis answered: stays deleted
                        specs = [s for s in specs if self._pending.get(s.get("id"), "") is not None]
                    self.loaded.set()
                    on_loaded(specs)
            if self.loaded.is_set():
                self._flush()
            self._wake.wait(self._retry if (self._pending or not self.loaded.is_set()) else None)
            self._wake.clear()
        self._flush()

    def _read(self) -> list[dict[str, Any]] | None:
        try:
            raw = self._client.hgetall(self.key)
        except redis.RedisError as exc:
            self._failed("read the remembered streams", exc)
            return None
        self._answered()
        specs = []
        for field, value in raw.items():
            try:
                specs.append(json.loads(value))
            except ValueError:
                log.warning("ignoring a remembered stream that is not JSON: %s", field.decode(errors="replace"))
        return specs

    def _flush(self) -> None:
        with self._lock:
            pending = dict(self._pending)
        if not pending:
            return
        try:
            pipe = self._client.pipeline(transaction=True)
            for stream_id, value in pending.items():
                if value is None:
                    pipe.hdel(self.key, stream_id)
                else:
                    pipe.hset(self.key, stream_id, value)
            pipe.execute()
        except redis.RedisError as exc:
            self._failed(f"remember {len(pending)} stream change(s)", exc)
            return  # kept pending, retried
        self._answered()
        with self._lock:
            for stream_id, value in pending.items():
                if self._pending.get(stream_id, object()) == value:
                    del self._pending[stream_id]

    def _failed(self, doing: str, exc: redis.RedisError) -> None:
        """Log why Redis failed the book: at its first failure, then at most once a minute."""
        from segstream.pipeline.wire.redis_link import answered_error, refused_access

        if refused_access(exc):
            reason = str(answered_error(self._url, exc))
        else:
            reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        now = time.monotonic()
        if self.trouble is None or now - self._trouble_logged >= TROUBLE_LOG_INTERVAL:
            log.warning("stream book %s: cannot %s (%s); retrying", self.key, doing, reason)
            self._trouble_logged = now
        self.trouble = reason

    def _answered(self) -> None:
        if self.trouble is not None:
            log.warning("stream book %s: Redis answers again", self.key)
            self.trouble = None

    def close(self, timeout: float = 3.0) -> None:
        """Write what is pending (if Redis answers) and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._client.close()
