"""Consumer API: read a segstream stream from Redis as schema-v1 dicts.

    for message in Subscriber("redis://localhost:6379/0", "cam1", from_start=True):
        if message.get("eos"): break
        for inst in message["instances"]:
            mask = decode_mask(inst["mask"])   # uint8 [height, width]
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from segstream.pipeline.sinks.redis_stream import connect, stream_key
from segstream.pipeline.wire import decode_mask  # noqa: F401  (part of the consumer API)


class Subscriber:
    """Iterates the entries of `<prefix><stream_id>` in order, blocking for new ones.

    from_start: begin at the oldest entry still kept (else: only entries added from now on).
    block_ms: stop iterating after this long without a new entry (0: wait forever).
    """

    def __init__(self, url: str, stream_id: str, prefix: str = "segstream:", from_start: bool = False,
                 block_ms: int = 0, count: int = 64) -> None:
        self.client = connect(url)
        self.key = stream_key(prefix, stream_id)
        self.last_id = "0-0" if from_start else "$"
        self.block_ms = block_ms
        self.count = count
        self.last_raw = ""
        if self.last_id == "$":
            # Pin "now" to a concrete id so nothing added between two reads is missed.
            info = self.client.xinfo_stream(self.key) if self.client.exists(self.key) else None
            self.last_id = info["last-generated-id"].decode() if info else "0-0"

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            reply = self.client.xread({self.key: self.last_id}, count=self.count, block=self.block_ms or 0)
            if not reply:
                if self.block_ms:
                    return
                continue
            for entry_id, fields in reply[0][1]:
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                raw = fields[b"data"] if b"data" in fields else fields["data"]
                self.last_raw = raw.decode() if isinstance(raw, bytes) else raw
                yield json.loads(self.last_raw)

    def read_all(self) -> list[dict[str, Any]]:
        """Every entry currently kept, oldest first (does not wait)."""
        entries = self.client.xrange(self.key)
        return [json.loads(fields[b"data"]) for _, fields in entries]
