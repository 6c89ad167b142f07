"""The Redis link: connecting, telling an outage from a refusal, naming keys, and the one retry policy.

Everything that talks to Redis goes through here: the producer (pipeline/sinks/redis_stream.py), the
consumer (pipeline/wire/consumer.py), the service's stream book and the fleet's workers.

- `connect(url)`: a checked client (PING answered) for redis://, rediss:// and unix:// URLs with
  user/password; `RedisLinkError` with one line naming the cause (refused credentials, a bad URL;
  `RedisUnreachable`, one of them, when Redis did not answer), the URL's secrets shown as `***`.
  `wait_for_redis(url, policy)`: connect, waiting out an unreachable Redis under the retry policy.
- Two kinds of trouble. An *outage* (`CONNECTION_ERRORS`: refused, reset, timed out, LOADING after
  a restart) passes: wait and retry. A *refusal* (`refused_access`: wrong or changed credentials,
  an ACL without the right) does not pass by itself: at start it is an error; while running it is
  retried only where the caller says so, and logged at most once a minute (`LogThrottle`).
- `RetryPolicy`: the one retry policy for Redis, equal-jitter exponential backoff (redis-py's
  `EqualJitterBackoff`, config `redis.backoff_initial` up to `redis.backoff_max`) for as long as it
  takes, interruptible by the caller's stop signal. (A camera's reconnects are another matter, with
  their own `source.backoff_*`: pipeline/sources/camera.py.)
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, TypeVar

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.retry import Retry

from segstream.pipeline.sources.locations import redact

T = TypeVar("T")

#: "Redis is away for now": refused, reset, timed out, LOADING its data after a restart
#: (redis-py's BusyLoadingError is a ConnectionError). AuthenticationError is one too in redis-py:
#: `refused_access` tells it apart.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)
#: Seconds between two log lines about the same lasting trouble (a refusal, an outage).
TROUBLE_LOG_INTERVAL = 60.0


class RedisLinkError(RuntimeError):
    """Redis cannot be used as asked (unreachable, refused, a bad URL); the message is one line for the user."""


class RedisUnreachable(RedisLinkError):
    """Redis did not answer (down, restarting, a network fault): an outage, which may pass."""


def stream_key(prefix: str, stream_id: str) -> str:
    """The Redis key of a stream: `<prefix><stream-id>` (wire schema v1, design.md section 3)."""
    return f"{prefix}{stream_id}"


def reason(exc: BaseException) -> str:
    """The first line of an error, or its type's name when it says nothing."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def refused_access(exc: BaseException) -> bool:
    """Whether Redis refused who we are (wrong or changed credentials, an ACL without the right)."""
    text = str(exc)
    refusals = (redis.AuthenticationError, redis.exceptions.AuthorizationError, redis.exceptions.NoPermissionError)
    return isinstance(exc, refusals) or any(code in text for code in ("NOAUTH", "WRONGPASS", "NOPERM"))


def answered_error(url: str, exc: redis.RedisError, doing: str = "") -> RedisLinkError:
    """The one-line error for a Redis that refused the credentials or answered with an error."""
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
        return RedisLinkError(f"Redis at {redact(url)} refused the credentials ({exc})")
    return RedisLinkError(f"Redis at {redact(url)} answered with an error{doing} ({exc})")


def _sleep_then_go_on(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class RetryPolicy:
    """The one retry policy for Redis: equal-jitter backoff from `initial` up to `cap` seconds, for ever.

    `call(do)` runs `do` until it returns, waiting between attempts while Redis is away:

        policy = RetryPolicy.from_config(config.redis)
        client = policy.call(lambda: connect(url), wait=stopping.wait)   # a worker waiting for Redis

    wait(seconds) -> bool waits between attempts and says whether to stop (threading.Event.wait
    fits: a stop request ends the wait at once); stopping re-raises the last error. on_failure(error)
    hears about every failed attempt (log the first, say when it is back). retry_refusals: keep
    retrying a refusal of the credentials too (a running writer that must not lose what it holds),
    else it is raised at once. `errors`: what counts as an outage (default CONNECTION_ERRORS).
    """

    def __init__(self, initial: float = 0.5, cap: float = 5.0) -> None:
        self.initial = initial
        self.cap = cap

    @classmethod
    def from_config(cls, section: Any) -> RetryPolicy:
        """From a config section with `backoff_initial` and `backoff_max` (config.redis)."""
        return cls(section.backoff_initial, section.backoff_max)

    def backoff(self) -> EqualJitterBackoff:
        """redis-py's backoff of this policy (for a loop that counts its own failures)."""
        return EqualJitterBackoff(cap=self.cap, base=self.initial)

    def call(self, do: Callable[[], T], *, wait: Callable[[float], bool] = _sleep_then_go_on,
             on_failure: Callable[[BaseException], None] | None = None, retry_refusals: bool = False,
             errors: tuple[type[BaseException], ...] = CONNECTION_ERRORS) -> T:
        """`do()`'s result, retried through outages (see the class doc); raises what is not retried."""
        backoff = self.backoff()
        failures = 0
        while True:
            try:
                return do()
            except (*errors, redis.RedisError, OSError) as exc:
                refused = refused_access(exc)
                outage = isinstance(exc, errors) and not refused
                if not (outage or (refused and retry_refusals)):
                    raise  # Redis answered: an error, or a refusal the caller does not wait out
                failures += 1
                if on_failure is not None:
                    on_failure(exc)
                if wait(backoff.compute(failures)):
                    raise


def connect(url: str, timeout: float = 5.0, retry: bool = True) -> redis.Redis:
    """A checked client (PING answered); RedisLinkError when unreachable, refused or not a Redis URL.

    retry=False turns off redis-py's transparent retry of a command whose connection broke: right
    for XADD, whose first attempt may have landed (pipeline/sinks/redis_stream.py), and wherever
    RetryPolicy decides instead.
    """
    extra = {} if retry else {"retry": Retry(NoBackoff(), 0)}
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, **extra)
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        raise answered_error(url, exc) from None
    except ValueError as exc:
        raise RedisLinkError(f"bad Redis URL {redact(url)} ({reason(exc)})") from None
    except (redis.RedisError, OSError) as exc:
        raise RedisUnreachable(f"cannot reach Redis at {redact(url)} ({reason(exc)})") from None
    return client


def wait_for_redis(url: str, policy: RetryPolicy, *, wait: Callable[[float], bool] = _sleep_then_go_on,
                   on_failure: Callable[[BaseException], None] | None = None, timeout: float = 5.0) -> redis.Redis:
    """connect(url), retried under `policy` while Redis is unreachable (a process that starts before its Redis).

    A refusal or a bad URL is RedisLinkError at once (waiting would not help); a stop (`wait` returned
    True, e.g. threading.Event.wait of a stop request) raises the last RedisUnreachable.
    """
    return policy.call(lambda: connect(url, timeout), wait=wait, on_failure=on_failure, errors=(RedisUnreachable,))


class LogThrottle:
    """At most one log line per `interval` seconds about one lasting trouble (thread-safe)."""

    def __init__(self, interval: float = TROUBLE_LOG_INTERVAL) -> None:
        self.interval = interval
        self._last = -interval
        self._lock = threading.Lock()

    def due(self) -> bool:
        """True (and counted as logged now) when the last line is at least `interval` seconds old."""
        now = time.monotonic()
        with self._lock:
            if now - self._last >= self.interval:
                self._last = now
                return True
            return False
