"""Where a stream's track ids continue when another worker takes it over (a file job resumed, a
camera moved): after the highest `track_id` already published on it, read back from the stream's
newest entries (as the frame number is, fleet/jobs.py `resume_point`, fleet/cameras.py
`next_frame`), so ids are never reused in a stream (README, docs/tracking.md).

Ids only grow within a stream, and the highest one was given to an instance of the frame where its
track began: the newest `TRACK_ID_LOOKBACK` entries hold it unless no new track began in them,
which at 30 frames/s means more than half a minute without one new object.
"""

from __future__ import annotations

import json
from typing import Any

import redis

#: Newest entries of a stream read back for its highest track id.
TRACK_ID_LOOKBACK = 1000
#: Entries per XREVRANGE call (each holds a frame's masks: a few KB).
PAGE = 100
#: Larger "ids" on a stream are not the tracker's (it counts from 1): ignored.
LARGEST_ID = 2**53


def highest_track_id(data: Any) -> int:
    """The highest track_id among one entry's instances (the raw `data` JSON); 0 when none (or
    the entry is not a frame: an EOS, a status, something that does not parse)."""
    try:
        message = json.loads(data)
        instances = message.get("instances") if isinstance(message, dict) else None
    except (ValueError, UnicodeDecodeError):
        return 0
    ids = [inst.get("track_id") for inst in instances if isinstance(inst, dict)] if isinstance(instances, list) else []
    return max((i for i in ids if type(i) is int and 0 < i < LARGEST_ID), default=0)


def next_track_id(client: redis.Redis, key: str, lookback: int = TRACK_ID_LOOKBACK) -> int | None:
    """1 + the highest track_id on the newest `lookback` entries of stream `key`; None when none has one."""
    highest, newest, read = 0, "+", 0
    while read < lookback:
        page = client.xrevrange(key, newest, "-", count=min(PAGE, lookback - read))
        if not page:
            break
        for _entry_id, fields in page:
            highest = max(highest, highest_track_id(fields.get(b"data", fields.get("data", b""))))
        read += len(page)
        last = page[-1][0]
        newest = f"({last.decode() if isinstance(last, bytes) else last}"
    return highest + 1 if highest else None
