"""File jobs: a Redis stream read through a consumer group, with fenced claims.

A job is one entry on `<p>fleet:jobs` (field `job`: its id) plus a hash with what it is and what
became of it. Workers read new entries with XREADGROUP; an entry stays in the group's pending list
until its worker acknowledges it after the file's EOS entry is on the result stream. A running
worker refreshes the idle time of its claims on every heartbeat; a worker that stops doing so
(killed, paused, cut off) has its entries taken over with XAUTOCLAIM once they are idle for
`fleet.lease` seconds. Every claim increments the job's fencing token; the Redis sink writes the
job's results only while that token is current (sinks/redis_stream.py FENCED_XADD), and refreshing,
finishing and handing back check it in the same Lua step as what they change. A finished job's
entry is acknowledged and deleted, so the stream and the pending list hold only unfinished jobs.

Anyone who can write to Redis can write a bad job, so entries and records are validated
(segstream/pipeline/wire/schema.py JobEntry, JobRecord) before anything is done with them. A bad one is a
failed job: its record says why where the job can be named, and its entry is copied to
`<jobs>:dead` (fields plus `reason` and `entry`), acknowledged and deleted in one step, so neither
this worker nor XAUTOCLAIM on another ever hands it out again.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError

from segstream.fleet.keys import FleetKeys
from segstream.fleet.track_ids import next_track_id
from segstream.pipeline.wire.schema import JobEntry, JobRecord, MalformedEntry, message_kind, parse_entry, why
from segstream.pipeline.wire.stream_id import check_stream_id

log = logging.getLogger(__name__)
#: The jobs' dead-letter stream keeps about this many entries (oldest trimmed).
DEAD_LETTER_MAXLEN = 10_000


# KEYS: job hash, fence. ARGV: worker, now. -> {token, attempts}
_CLAIM = """
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'token', token, 'started', ARGV[2])
return {token, attempts}
"""
# KEYS: fence, jobs. ARGV: token, group, worker, entry. -> 1 still ours (idle time reset), 0 lost
_REFRESH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
return 1
"""
# KEYS: fence, jobs, job hash. ARGV: token, group, entry, state, now, frames, reason, keep seconds
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], 'state', ARGV[4], 'finished', ARGV[5], 'frames', ARGV[6], 'reason', ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[8])
redis.call('DEL', KEYS[1])
return 1
"""
# KEYS: fence, jobs, job hash. ARGV: token, group, worker, entry, idle ms.
# Fences out this worker's own late writes, and makes the entry claimable by others at once.
_HAND_BACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('INCR', KEYS[1])
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'IDLE', ARGV[5], 'JUSTID')
redis.call('HINCRBY', KEYS[3], 'attempts', -1)
redis.call('HSET', KEYS[3], 'state', 'waiting', 'worker', '')
return 1
"""


@dataclass
class Claim:
    """A job this worker holds: its jobs-stream entry and its fencing token."""

    job_id: str
    entry_id: str
    token: int
    attempts: int
    record: dict[str, str]

    @property
    def stream_id(self) -> str:
        return self.record["stream_id"]

    @property
    def source(self) -> str:
        return self.record["source"]


@dataclass
class Resume:
    """Where a claimed job starts: `start_frame` (None: from the beginning) or already ended;
    `first_track_id`: its new tracks' first id, after those on its stream (None: from 1)."""

    start_frame: int | None = None
    eos_frames: int | None = None
    first_track_id: int | None = None


class MalformedJob(ValueError):
    """A job whose entry or record does not validate; already recorded as failed and dead-lettered."""

    def __init__(self, job_id: str | None, reason: str) -> None:
        super().__init__(reason)
        self.job_id = job_id
        self.reason = reason


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class JobQueue:
    def __init__(self, client: redis.Redis, keys: FleetKeys, group: str = "workers", lease: float = 10.0,
                 keep_finished: float = 86400.0) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.lease_ms = int(lease * 1000)
        self.keep_finished = int(keep_finished)
        self._claim = client.register_script(_CLAIM)
        self._refresh = client.register_script(_REFRESH)
        self._finish = client.register_script(_FINISH)
        self._hand_back = client.register_script(_HAND_BACK)

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.keys.jobs, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- submit ----------------------------------------------------------------------------
    def submit(self, source: str, stream_id: str) -> str:
        """Enqueue one file job; returns its id. `base`: the newest entry of the result stream now,
        so a resumed job reads only what this job published."""
        check_stream_id(stream_id)  # ValueError: one line naming the rule
        self.ensure_group()
        job_id = uuid.uuid4().hex[:12]
        newest = self.client.xrevrange(self.keys.results(stream_id), count=1)
        base = _text(newest[0][0]) if newest else "0-0"
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.job(job_id), mapping={"id": job_id, "source": source, "stream_id": stream_id,
                                                  "state": "waiting", "attempts": 0, "submitted": now,
                                                  "base": base, "worker": "", "reason": ""})
        pipe.zadd(self.keys.job_index, {job_id: now})
        pipe.xadd(self.keys.jobs, {"job": job_id})
        pipe.execute()
        return job_id

    # -- take ------------------------------------------------------------------------------
    def take(self, worker: str, count: int, block_ms: int) -> list[tuple[str, str]]:
        """Up to `count` (entry id, job id): first those of silent workers (idle > lease), then new ones."""
        taken: list[tuple[str, str]] = []
        reply = self.client.xautoclaim(self.keys.jobs, self.group, worker, self.lease_ms, "0-0", count=count)
        for entry_id, fields in reply[1]:
            if fields:
                self._take_entry(_text(entry_id), fields, taken)
        gone = reply[2] if len(reply) > 2 else []
        if gone:  # pending, but deleted from the stream: nothing to run
            self.client.xack(self.keys.jobs, self.group, *gone)
        if len(taken) < count:
            reply = self.client.xreadgroup(self.group, worker, {self.keys.jobs: ">"}, count=count - len(taken),
                                           block=block_ms)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    self._take_entry(_text(entry_id), fields or {}, taken)
        return taken

    def _take_entry(self, entry_id: str, fields: dict, taken: list[tuple[str, str]]) -> None:
        """Append (entry id, job id) of a valid entry; dead-letter one without a valid `job` field."""
        try:
            job_id = JobEntry.model_validate({_text(k): _text(v) for k, v in fields.items()}).job
        except ValidationError as exc:
            reason = f"malformed job entry: {why(exc)}"
            self.reject(entry_id, fields, reason)
            log.warning("jobs entry %s failed: %s (moved to %s:dead)", entry_id, reason, self.keys.jobs)
            return
        taken.append((entry_id, job_id))

    def reject(self, entry_id: str, fields: dict, reason: str, job_id: str | None = None) -> None:
        """Fail a job that cannot run as written, in one step: its record (when it is a hash) says
        `failed` and why, its entry goes to `<jobs>:dead` and leaves the stream and the pending list."""
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        if job_id is not None:
            pipe.hset(self.keys.job(job_id), mapping={"state": "failed", "finished": now, "reason": reason})
            pipe.expire(self.keys.job(job_id), self.keep_finished)
            pipe.zadd(self.keys.job_index, {job_id: now}, nx=True)
        pipe.xadd(f"{self.keys.jobs}:dead", {**fields, "reason": reason, "entry": entry_id},
                  maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        pipe.xack(self.keys.jobs, self.group, entry_id)
        pipe.xdel(self.keys.jobs, entry_id)
        try:
            pipe.execute()
        except redis.ResponseError:  # e.g. the record is not a hash: the other commands ran anyway (no rollback)
            pass

    def claim(self, worker: str, entry_id: str, job_id: str) -> Claim | None:
        """Take the job under a new fencing token (None: its record is gone; the entry is dropped).

        Raises MalformedJob, after recording the job as failed and dead-lettering its entry, when its
        record does not validate.
        """
        try:
            raw = self.client.hgetall(self.keys.job(job_id))
        except redis.ResponseError:  # WRONGTYPE: the key holds something other than a hash
            reason = "malformed job record: not a hash"
            self.reject(entry_id, {"job": job_id}, reason)
            raise MalformedJob(job_id, reason) from None
        record = {_text(k): _text(v) for k, v in raw.items()}
        if not record:
            self.client.xack(self.keys.jobs, self.group, entry_id)
            self.client.xdel(self.keys.jobs, entry_id)
            return None
        try:
            JobRecord.model_validate(record)
        except ValidationError as exc:
            reason = f"malformed job record: {why(exc)}"
            self.reject(entry_id, {"job": job_id}, reason, job_id)
            raise MalformedJob(job_id, reason) from None
        token, attempts = self._claim(keys=[self.keys.job(job_id), self.keys.job_fence(job_id)],
                                      args=[worker, time.time()])
        return Claim(job_id, entry_id, int(token), int(attempts), record)

    def resume_point(self, claim: Claim) -> Resume:
        """After the newest frame this job already published (frame N -> N+1), or its EOS."""
        key = self.keys.results(claim.stream_id)
        base = claim.record.get("base", "0-0")
        newest = self.client.xrevrange(key, "+", f"({base}", count=16)
        for entry_id, fields in newest:
            try:
                message = parse_entry(fields)
            except MalformedEntry as exc:
                # Not a point to resume from (nor a reason to stop): look at the entry before it.
                log.warning("job %s: result entry %s of %s is malformed (%s); not a resume point",
                            claim.job_id, _text(entry_id), key, exc)
                continue
            kind = message_kind(message)
            if kind == "eos":
                return Resume(eos_frames=message["frames"])
            if kind == "frame":
                return Resume(start_frame=message["frame"] + 1, first_track_id=next_track_id(self.client, key))
        return Resume(first_track_id=next_track_id(self.client, key))

    # -- while running ---------------------------------------------------------------------
    def refresh(self, claim: Claim, worker: str) -> bool:
        """Reset the claim's idle time; False when another worker holds the job now."""
        return bool(self._refresh(keys=[self.keys.job_fence(claim.job_id), self.keys.jobs],
                                  args=[claim.token, self.group, worker, claim.entry_id]))

    def finish(self, claim: Claim, state: str, frames: int = 0, reason: str = "") -> bool:
        """Record done/failed, acknowledge and delete the entry; False when the claim was lost."""
        return bool(self._finish(keys=[self.keys.job_fence(claim.job_id), self.keys.jobs, self.keys.job(claim.job_id)],
                                 args=[claim.token, self.group, claim.entry_id, state, time.time(), frames, reason,
                                       self.keep_finished]))

    def hand_back(self, claim: Claim, worker: str) -> bool:
        """A stopping worker gives the job back: its own later writes are fenced out and another
        worker may claim it at once (it resumes after the last published frame)."""
        return bool(self._hand_back(keys=[self.keys.job_fence(claim.job_id), self.keys.jobs, self.keys.job(claim.job_id)],
                                    args=[claim.token, self.group, worker, claim.entry_id, self.lease_ms * 10]))

    # -- read by status --------------------------------------------------------------------
    def records(self, limit: int = 1000) -> list[dict[str, str]]:
        """The newest `limit` job records (expired ones are dropped from the index)."""
        ids = [_text(i) for i in self.client.zrevrange(self.keys.job_index, 0, limit - 1)]
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.keys.job(job_id))
        out, expired = [], []
        for job_id, raw in zip(ids, pipe.execute()):
            if not raw:
                expired.append(job_id)
                continue
            record = {_text(k): _text(v) for k, v in raw.items()}
            # A record written by hand may lack fields: listed with what it has (status never fails on it).
            record.setdefault("id", job_id)
            record.setdefault("stream_id", "?")
            record.setdefault("source", "")
            for number in ("attempts", "frames"):  # listed as unknown rather than failing the listing
                if not re.fullmatch(r"-?[0-9]{1,18}", record.get(number, "0")):
                    del record[number]
            out.append(record)
        if expired:
            self.client.zrem(self.keys.job_index, *expired)
        return out
