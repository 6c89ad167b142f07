"""Redis sink: XADD one schema-v1 entry per frame (and the EOS entry), optional Pub/Sub."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from segstream.pipeline.messages import EndOfStream, FrameResult
from segstream.pipeline.sinks import SinkError
from segstream.pipeline.wire import dumps


def redact(url: str) -> str:
    """The URL with its password replaced, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, timeout: float = 5.0) -> redis.Redis:
    """A checked connection (PING answered); redis://, rediss:// and unix:// URLs with user/password."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        client.ping()
    except redis.AuthenticationError as exc:
        raise SinkError(f"Redis at {redact(url)} refused the credentials ({exc})") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise SinkError(f"Redis at {redact(url)} refused the credentials ({exc})") from None
        raise SinkError(f"Redis at {redact(url)} answered with an error ({exc})") from None
    except (redis.RedisError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SinkError(f"cannot reach Redis at {redact(url)} ({reason})") from None
    return client


def stream_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}{stream_id}"


class RedisStreamSink:
    """Publishes to `<prefix><stream-id>` with XADD MAXLEN ~ maxlen."""

    def __init__(self, url: str, prefix: str = "segstream:", maxlen: int = 10000, pubsub: bool = False) -> None:
        self.url = url
        self.prefix = prefix
        self.maxlen = maxlen
        self.pubsub = pubsub
        self.client = connect(url)
        self.entries = 0

    def _publish(self, stream_id: str, message: dict[str, Any]) -> None:
        key = stream_key(self.prefix, stream_id)
        data = dumps(message)
        try:
            self.client.xadd(key, {"data": data}, maxlen=self.maxlen, approximate=True)
            if self.pubsub:
                self.client.publish(key, data)
        except redis.RedisError as exc:
            raise SinkError(f"publishing to Redis at {redact(self.url)} failed ({exc})") from None
        self.entries += 1

    def write(self, result: FrameResult, message: dict[str, Any]) -> None:
        self._publish(result.frame.stream_id, message)

    def end_stream(self, eos: EndOfStream, message: dict[str, Any]) -> None:
        self._publish(eos.stream_id, message)

    def close(self) -> None:
        self.client.close()
