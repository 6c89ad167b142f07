"""What a fleet process says about its Redis while its loops retry: one line when Redis goes away,
one when it is back, one a minute while it refuses the credentials or a loop keeps failing.

The retrying itself is the one policy of pipeline/wire/redis_link.py; this only keeps the state
(`since`: when the trouble began, None while Redis answers) that /readyz and the worker record read.
"""

from __future__ import annotations

import logging
import time

import redis

from segstream.pipeline.wire.redis_link import LogThrottle, answered_error, refused_access

log = logging.getLogger("segstream.fleet.worker")

#: Seconds between log lines while Redis refuses the credentials, or a loop keeps failing.
REPEAT_LOG_INTERVAL = 60.0


class RedisHealth:
    """Thread-safe enough for its use: the loops set and clear `since`; readers take a snapshot."""

    def __init__(self, worker: str, url: str) -> None:
        self.worker, self.url = worker, url
        self.since: float | None = None
        self._refused_lines = LogThrottle(REPEAT_LOG_INTERVAL)
        self._trouble_lines = LogThrottle(REPEAT_LOG_INTERVAL)

    def away(self, exc: BaseException) -> None:
        """A Redis call failed with an outage or a refusal (the loops retry it)."""
        if isinstance(exc, redis.RedisError) and refused_access(exc):  # not an outage: said once a minute
            if self._refused_lines.due():
                log.error("worker %s: %s; the camera book and the jobs wait, retrying (one line a minute)",
                          self.worker, answered_error(self.url, exc))
            self.since = self.since or time.time()
            return
        if self.since is None:
            self.since = time.time()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("worker %s: Redis unreachable (%s); waiting and retrying", self.worker, reason)

    def back(self) -> None:
        """A Redis call succeeded."""
        if self.since is not None:
            log.warning("worker %s: Redis reachable again after %.1f s", self.worker, time.time() - self.since)
            self.since = None

    def trouble(self, what: str, exc: BaseException) -> None:
        """Anything else a loop met (it goes on): one line a minute."""
        if self._trouble_lines.due():
            log.error("worker %s: %s: %s (retrying; one line a minute)", self.worker, what,
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
