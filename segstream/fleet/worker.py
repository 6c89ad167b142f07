"""`segstream worker`: one loaded engine (a StreamingPipeline kept alive) running file jobs and
cameras for the fleet, several at once, batched together.

Threads: the main loop takes jobs (XAUTOCLAIM, then XREADGROUP), starts and finishes streams and
balances cameras; the heartbeat thread writes the worker's hash and renews every claim and lease
each `fleet.heartbeat` seconds, so a slow main loop never costs a lease. Redis away: both loops
log once and retry with backoff; the pipeline's sink keeps results in its outboxes (nothing
lost). SIGTERM/SIGINT: stop taking work, hand jobs back (fenced, claimable at once), let cameras
publish their `ended` status, release their leases, exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import EqualJitterBackoff

from segstream.fleet.cameras import CameraBook, live_workers, share
from segstream.fleet.jobs import Claim, JobQueue, MalformedJob
from segstream.fleet.keys import FleetKeys
from segstream.pipeline.config import RunConfig
from segstream.pipeline.sources.locations import redact
from segstream.pipeline.sinks import SinkError
from segstream.pipeline.wire.redis_link import CONNECTION_ERRORS, RedisLinkError, connect
from segstream.pipeline.streams import SourceError
from segstream.pipeline.stream_spec import StreamSpec, make_source
from segstream.pipeline.streaming import StreamingPipeline

log = logging.getLogger(__name__)

REDIS_TROUBLE = CONNECTION_ERRORS + (redis.BusyLoadingError,)


@dataclass
class RunningJob:
    claim: Claim
    errors_from: int  # unused: a source's error is its chain's producer_error(stream id), cleared at its start
    lost: bool = False


@dataclass
class OwnedCamera:
    camera_id: str
    url: str
    token: int
    acquired: float = field(default_factory=time.monotonic)
    lost: bool = False


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    def __init__(self, config: RunConfig, name: str | None = None, capacity: int | None = None) -> None:
        if not config.redis.url:
            raise SinkError("a worker needs Redis (--redis URL)")
        self.config = config
        self.fleet = config.fleet
        self.name = name or default_name()
        self.capacity = capacity or self.fleet.capacity
        self.keys = FleetKeys(config.redis.prefix)
        self.jobs: dict[str, RunningJob] = {}  # by stream id
        self.cameras: dict[str, OwnedCamera] = {}
        self.removing: dict[str, threading.Thread] = {}
        self.refused: dict[str, str] = {}  # camera id -> the URL the source policy refused
        # jobs/cameras change on the main loop and are read by the heartbeat and Redis' writer thread.
        self._held = threading.Lock()
        self.stopping = threading.Event()
        self.pipeline: StreamingPipeline | None = None
        self.client: redis.Redis | None = None
        self.started = time.time()
        self.jobs_done = 0
        self.jobs_failed = 0
        self._balanced = 0.0
        self._redis_trouble_since: float | None = None
        self._backoff = EqualJitterBackoff(cap=config.redis.backoff_max, base=config.redis.backoff_initial)

    # -- life cycle ----------------------------------------------------------------------------
    def run(self) -> int:
        """Until SIGTERM/SIGINT (or stop()); 0 after a clean hand-back, 1 when the engine failed."""
        self._connect()
        if self.stopping.is_set():
            return 0
        self.jobs_q = JobQueue(self.client, self.keys, self.fleet.group, self.fleet.lease, self.fleet.keep_finished)
        self.book = CameraBook(self.client, self.keys, self.fleet.lease)
        try:
            self._retrying(self.jobs_q.ensure_group)
        except SinkError:  # stopped while Redis was away: nothing was taken yet
            return 0
        self.pipeline = StreamingPipeline(self.config, keep_alive=True)
        self.pipeline.redis.on_fenced = self._fenced
        self.pipeline.start()
        beat = threading.Thread(target=self._heartbeat_loop, name="fleet-heartbeat", daemon=True)
        self._beat_once()
        beat.start()
        log.info("worker %s ready (capacity %d) on Redis %s", self.name, self.capacity, redact(self.config.redis.url))
        failures = 0
        while not self.stopping.is_set():
            if self.pipeline.chain.done():
                break
            try:
                if self._step():  # a Redis call succeeded
                    failures = 0
                    self._redis_back()
            except REDIS_TROUBLE as exc:
                failures += 1
                self._redis_away(exc)
                self.stopping.wait(self._backoff.compute(failures))
        return self._shutdown()

    def stop(self) -> None:
        self.stopping.set()

    def install_signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.stopping.is_set() and self.pipeline is not None:
                self.pipeline.abort()
            self.stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)

    def _connect(self) -> None:
        """Wait for Redis (retrying with backoff) until it answers or the worker is stopped."""
        failures = 0
        while not self.stopping.is_set():
            try:
                self.client = connect(self.config.redis.url)
                self._redis_back()
                return
            except RedisLinkError as exc:
                if "credentials" in str(exc):
                    raise
                failures += 1
                self._redis_away(exc)
                self.stopping.wait(self._backoff.compute(failures))

    def _retrying(self, call: Any) -> Any:
        failures = 0
        while True:
            try:
                return call()
            except REDIS_TROUBLE as exc:
                failures += 1
                self._redis_away(exc)
                if self.stopping.wait(self._backoff.compute(failures)):
                    raise SinkError("stopped while waiting for Redis") from None

    def _redis_away(self, exc: BaseException) -> None:
        if self._redis_trouble_since is None:
            self._redis_trouble_since = time.time()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("worker %s: Redis unreachable (%s); waiting and retrying", self.name, reason)

    def _redis_back(self) -> None:
        if self._redis_trouble_since is not None:
            log.warning("worker %s: Redis reachable again after %.1f s", self.name, time.time() - self._redis_trouble_since)
            self._redis_trouble_since = None

    # -- the main loop -------------------------------------------------------------------------
    def _step(self) -> bool:
        """One round of the main loop; True when it talked to Redis."""
        self._reap()
        talked = False
        if time.monotonic() - self._balanced >= self.fleet.heartbeat:
            self._balance_cameras()
            self._balanced = time.monotonic()
            talked = True
        free = self.capacity - len(self.jobs) - len(self.cameras)
        if free <= 0:
            self.stopping.wait(0.2)
            return talked
        block_ms = int(min(1.0, self.fleet.heartbeat) * 1000)
        for entry_id, job_id in self.jobs_q.take(self.name, free, block_ms):
            try:
                self._start_job(entry_id, job_id)
            except REDIS_TROUBLE:
                raise
            except Exception as exc:  # whatever a job holds, it fails alone: the worker keeps running
                reason = f"could not start: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"[:300]
                log.warning("job %s failed: %s", job_id, reason)
                self.jobs_failed += 1
                for stream_id, job in list(self.jobs.items()):  # registered before it failed: nothing runs for it
                    if job.claim.job_id == job_id:
                        with self._held:
                            del self.jobs[stream_id]
                        self._drop_stream(stream_id)
                self.jobs_q.reject(entry_id, {"job": job_id}, reason, job_id)
        return True

    def _start_job(self, entry_id: str, job_id: str) -> None:
        try:
            claim = self.jobs_q.claim(self.name, entry_id, job_id)
        except MalformedJob as exc:
            self.jobs_failed += 1
            log.warning("job %s failed: %s (moved to %s:dead)", job_id, exc.reason, self.keys.jobs)
            return
        if claim is None:
            return
        if claim.attempts > self.fleet.max_attempts:
            last = claim.record.get("worker") or "unknown"
            reason = (f"given up after {self.fleet.max_attempts} attempts: the worker running it stopped "
                      f"each time (last: {last})")
            if self.jobs_q.finish(claim, "failed", reason=reason):
                self.jobs_failed += 1
            log.warning("job %s (%s) failed: %s", job_id, claim.stream_id, reason)
            return
        resume = self.jobs_q.resume_point(claim)
        if resume.eos_frames is not None:  # its EOS landed; the worker died before acknowledging
            self.jobs_q.finish(claim, "done", frames=resume.eos_frames)
            return
        self._wait_removed(claim.stream_id)
        if claim.stream_id in self.pipeline.sources or claim.stream_id in self.jobs:
            self.jobs_q.finish(claim, "failed", reason=f"stream {claim.stream_id} is already being published on {self.name}")
            return
        try:  # the job's source is judged by this worker's policy before anything is opened
            spec = StreamSpec(id=claim.stream_id, url=claim.source, kind="file", start_frame=resume.start_frame,
                              first_track_id=resume.first_track_id)
            source = make_source(spec, self.config, "trusted")
            source.check()
        except (SourceError, ValueError) as exc:
            reason = str(exc).splitlines()[0]
            self.jobs_q.finish(claim, "failed", reason=reason)
            self.jobs_failed += 1
            log.warning("job %s (%s) failed: %s", job_id, claim.stream_id, reason)
            return
        self.pipeline.redis.fence(claim.stream_id, self.keys.job_fence(job_id), claim.token)
        with self._held:
            self.jobs[claim.stream_id] = RunningJob(claim, 0)
        self.pipeline.add_source(source)
        if resume.start_frame:
            log.info("job %s (%s): resuming at frame %d (attempt %d)", job_id, claim.stream_id,
                        resume.start_frame, claim.attempts)

    def _reap(self) -> None:
        """Finish jobs whose EOS is published or whose source failed; drop what was lost."""
        for stream_id, job in list(self.jobs.items()):
            state = self.pipeline.registry.get(stream_id)
            claim = job.claim
            if job.lost:
                log.warning("job %s (%s) was taken over by another worker; stopped here", claim.job_id, stream_id)
                self._drop_stream(stream_id)
                with self._held:
                    del self.jobs[stream_id]
                continue
            failure = self.pipeline.chain.producer_error(stream_id)  # this job's: cleared when its source was added
            error = str(failure) if failure is not None else (state.error if state is not None else None)
            if state is not None and state.eos_frames is not None:
                if self.jobs_q.finish(claim, "done", frames=state.eos_frames, reason=error or ""):
                    self.jobs_done += 1
                with self._held:
                    del self.jobs[stream_id]
                self._remove_stream(stream_id, then=lambda sid=stream_id: self.pipeline.redis.forget(sid))
            elif error is not None and stream_id not in self.pipeline.chain.producers():
                if self.jobs_q.finish(claim, "failed", reason=error.splitlines()[0]):
                    self.jobs_failed += 1
                log.warning("job %s (%s) failed: %s", claim.job_id, stream_id, error)
                with self._held:
                    del self.jobs[stream_id]
                self._drop_stream(stream_id)
        for camera_id, camera in list(self.cameras.items()):
            if camera.lost:
                log.warning("camera %s was taken over by another worker; stopped here", camera_id)
                with self._held:
                    del self.cameras[camera_id]
                self._drop_stream(camera_id)
        for stream_id, thread in list(self.removing.items()):
            if not thread.is_alive():
                del self.removing[stream_id]

    def _fenced(self, stream_id: str) -> None:
        """From the sink's writer thread: a write for this stream was refused by its fence."""
        with self._held:
            job, camera = self.jobs.get(stream_id), self.cameras.get(stream_id)
        if job is not None:
            job.lost = True
        if camera is not None:
            camera.lost = True

    # -- streams ending ------------------------------------------------------------------------
    def _remove_stream(self, stream_id: str, then: Any = None) -> None:
        """Stop a stream and wait for its drain in the background (then call `then`)."""
        def work() -> None:
            try:
                self.pipeline.remove_stream(stream_id)
            except KeyError:
                pass
            if then is not None:
                try:
                    then()
                except REDIS_TROUBLE:
                    pass  # the lease expires by itself

        thread = threading.Thread(target=work, name=f"remove:{stream_id}", daemon=True)
        self.removing[stream_id] = thread
        thread.start()

    def _drop_stream(self, stream_id: str) -> None:
        """A stream whose results may no longer be published here: nothing waits for its drain."""
        state = self.pipeline.registry.get(stream_id)
        if state is not None:
            state.finish()
        self._remove_stream(stream_id)

    def _wait_removed(self, stream_id: str) -> None:
        thread = self.removing.get(stream_id)
        if thread is not None:
            thread.join(self.config.shutdown_timeout + 1)

    # -- cameras -------------------------------------------------------------------------------
    def _balance_cameras(self) -> None:
        wanted = self.book.wanted()
        for camera_id in [c for c in self.cameras if c not in wanted or self.cameras[c].url != wanted[c]]:
            self._release_camera(camera_id, "removed from the wanted cameras")
        if self.stopping.is_set():
            return
        peers = live_workers(self.client, self.keys, self.fleet.lease)
        capacities = {name: int(w.get("capacity", "1")) for name, w in peers.items()}
        capacities[self.name] = self.capacity
        target = share(len(wanted), self.capacity, capacities)
        if len(self.cameras) > target:
            newest = max(self.cameras.values(), key=lambda c: c.acquired)
            self._release_camera(newest.camera_id, f"rebalancing ({len(self.cameras)} > share {target})")
            return
        free = [c for c in wanted if c not in self.cameras and c not in self.removing]
        random.shuffle(free)  # workers starting together try different cameras first
        owners = self.book.owners(free)
        for camera_id in free:
            if len(self.cameras) >= target:
                break
            if owners.get(camera_id) is None:
                self._take_camera(camera_id, wanted[camera_id])

    def _take_camera(self, camera_id: str, url: str) -> None:
        token = self.book.acquire(camera_id, self.name)
        if not token:
            return
        if camera_id in self.pipeline.sources:  # still draining from an earlier lease here
            self.book.release(camera_id, self.name)
            return
        start, first_track = self.book.next_frame(camera_id), self.book.next_track_id(camera_id)
        try:  # judged by this worker's source policy before anything is opened
            source = make_source(StreamSpec(id=camera_id, url=url, kind="live", start_frame=start,
                                            first_track_id=first_track), self.config, "trusted")
        except (SourceError, ValueError) as exc:
            if self.refused.get(camera_id) != url:  # said once per URL, not on every balancing round
                log.warning("camera %s refused: %s", camera_id, str(exc).splitlines()[0])
                self.refused[camera_id] = url
            self.book.release(camera_id, self.name)
            return
        self.refused.pop(camera_id, None)
        self.pipeline.redis.fence(camera_id, self.keys.camera_fence(camera_id), token)
        with self._held:
            self.cameras[camera_id] = OwnedCamera(camera_id, url, token)
        self.pipeline.add_source(source)
        log.info("camera %s: owned by %s (token %d)", camera_id, self.name, token)

    def _release_camera(self, camera_id: str, why: str) -> None:
        with self._held:
            camera = self.cameras.pop(camera_id, None)
        if camera is None:
            return
        log.info("camera %s: released by %s (%s)", camera_id, self.name, why)
        # The lease is given up only after the stream drained (its `ended` status published).
        self._remove_stream(camera_id, then=lambda: self.book.release(camera_id, self.name))

    # -- heartbeat -----------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.fleet.heartbeat):
            try:
                self._beat_once()
                self._redis_back()
            except REDIS_TROUBLE as exc:
                self._redis_away(exc)

    def _beat_once(self) -> None:
        with self._held:
            jobs, cameras = list(self.jobs.values()), list(self.cameras.values())
        for job in jobs:
            if not job.lost and not self.jobs_q.refresh(job.claim, self.name):
                job.lost = True
        for camera in cameras:
            if not camera.lost and not self.book.renew(camera.camera_id, self.name):
                camera.lost = True
        snapshot = self.snapshot()
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        key = self.keys.worker(self.name)
        pipe.hset(key, mapping={k: (v if isinstance(v, (str, int, float)) else json.dumps(v))
                                for k, v in snapshot.items()})
        pipe.pexpire(key, int(self.fleet.lease * 1000))
        pipe.zadd(self.keys.workers, {self.name: now})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now - 3600)  # forget workers gone for an hour
        pipe.execute()

    def snapshot(self) -> dict[str, Any]:
        """What the heartbeat hash and GET /status say about this worker."""
        streams = []
        fps = 0.0
        for state in self.pipeline.registry.all() if self.pipeline else []:
            snap = state.snapshot()
            fps += snap["fps_out"]
            lag = None if state.last_frame_time is None else round(time.time() - state.last_frame_time, 3)
            streams.append({"id": snap["id"], "kind": snap["kind"], "state": snap["state"], "fps": snap["fps_out"],
                            "published": snap["frames_published"], "lag": lag,
                            "dropped": sum(snap["dropped"].values())})
        with self._held:
            jobs, cameras = len(self.jobs), len(self.cameras)
        return {"name": self.name, "capacity": self.capacity, "load": jobs + cameras,
                "jobs": jobs, "cameras": cameras, "fps": round(fps, 2),
                "jobs_done": self.jobs_done, "jobs_failed": self.jobs_failed, "started": self.started,
                "host": socket.gethostname(), "pid": os.getpid(), "stopping": int(self.stopping.is_set()),
                "redis_up": int(self.pipeline.redis_up if self.pipeline else 0), "streams": streams}

    # -- shutdown ------------------------------------------------------------------------------
    def _shutdown(self) -> int:
        failed = bool(self.pipeline.chain.errors)
        for stream_id, job in list(self.jobs.items()):
            # Nothing more leaves this process for the job, not even the interrupted EOS of its
            # source: then the next worker resumes after the last frame that landed.
            self.pipeline.redis.fence(stream_id, self.keys.job_fence(job.claim.job_id), "handed-back")
            try:
                if not job.lost and self.jobs_q.hand_back(job.claim, self.name):
                    log.info("job %s (%s): handed back", job.claim.job_id, stream_id)
            except REDIS_TROUBLE:
                pass  # its claim goes idle: another worker takes it after fleet.lease
        done = self.pipeline.shutdown(self.config.shutdown_timeout)
        self.pipeline.close()
        try:
            for camera_id in list(self.cameras):
                self.book.release(camera_id, self.name)
            self.client.delete(self.keys.worker(self.name))
            self.client.zrem(self.keys.workers, self.name)
        except REDIS_TROUBLE:
            pass
        if failed:
            log.error("worker %s: the engine failed: %s", self.name, self.pipeline.chain.errors[0])
            return 1
        if not done:
            log.warning("worker %s: streams did not drain within shutdown_timeout (%g s); what was left is dropped "
                        "(jobs resume elsewhere after their last published frame)", self.name, self.config.shutdown_timeout)
        return 0
