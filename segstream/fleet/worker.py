"""One process of the fleet: `segstream worker`, and `segstream serve` (the same process with the HTTP
write API, fleet/control.py). One loaded engine (a StreamingPipeline kept alive) runs file jobs,
cameras of the book and local streams (files added over the API or a config), batched together.

An Application (commands/lifecycle.py): start() (waits for Redis, a refused password is one error;
loads the model, adds the config's streams, starts the threads), drain() (stop taking work, hand jobs back, let cameras publish their `ended`
status, release their leases), abort(), ended()/failure() (the engine failed), summary().

Threads: the main loop takes jobs (XAUTOCLAIM, then XREADGROUP), finishes them and balances the
cameras (fleet/cameras_owned.py) every `fleet.heartbeat` seconds, or at once when a message on the
wake channel says the book changed; the heartbeat thread writes the worker's record and renews
every claim and lease (fleet/heartbeat.py), so a slow main loop never costs a lease; the wake
thread listens on `<p>fleet:wake`. Redis away: the loops log once and retry with backoff; the
pipeline's sink keeps results in its outboxes (nothing lost).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import redis

from segstream.fleet import heartbeat
from segstream.fleet.cameras import CameraBook, adopt_service_streams, is_camera
from segstream.fleet.cameras_owned import CamerasOwned
from segstream.fleet.jobs import JobQueue
from segstream.fleet.jobs_running import JobsRunning
from segstream.fleet.keys import FleetKeys
from segstream.fleet.redis_health import RedisHealth
from segstream.pipeline.admission import open_admitted
from segstream.pipeline.config import RunConfig
from segstream.pipeline.sinks import SinkError
from segstream.pipeline.sources.locations import redact
from segstream.pipeline.sources.policy import Origin
from segstream.pipeline.stream_spec import StreamSpec
from segstream.pipeline.streaming import StreamingPipeline
from segstream.pipeline.streams import StreamState
from segstream.pipeline.wire.redis_link import CONNECTION_ERRORS, RedisUnreachable, RetryPolicy, wait_for_redis

log = logging.getLogger(__name__)

#: What the loops wait through, retrying: Redis away, loading, or refusing who we are (AuthenticationError
#: is a ConnectionError; an ACL without the right is NoPermissionError).
REDIS_TROUBLE = CONNECTION_ERRORS + (redis.BusyLoadingError, redis.exceptions.NoPermissionError)


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """`streams`: the config's streams (cameras go into the book, the rest run here)."""

    redis_trouble = REDIS_TROUBLE  # what the main loop waits through (JobsRunning re-raises it)

    def __init__(self, config: RunConfig, name: str | None = None, capacity: int | None = None,
                 streams: list[StreamSpec] | None = None) -> None:
        if not config.redis.url:
            raise SinkError("a worker needs Redis (--redis URL)")
        self.config = config
        self.fleet = config.fleet
        self.name = name or default_name()
        self.capacity = capacity or self.fleet.capacity
        self.keys = FleetKeys(config.redis.prefix)
        self.config_streams = list(streams or [])
        self.jobs: JobsRunning | None = None
        self.local: set[str] = set()  # streams of this process only (not jobs, not cameras)
        self.removing: dict[str, threading.Thread] = {}
        self._held = threading.Lock()  # `local` changes on HTTP threads, is read by the main loop and the heartbeat
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.pipeline: StreamingPipeline | None = None
        self.client: redis.Redis | None = None
        self.cameras: CamerasOwned | None = None
        self.started = time.time()
        self._balanced = 0.0
        self._loop: threading.Thread | None = None
        self._finished: bool | None = None  # drained in time, once shut down
        self._shutting = threading.Lock()
        self.redis_health = RedisHealth(self.name, config.redis.url)
        self._policy = RetryPolicy.from_config(config.redis)
        self._backoff = self._policy.backoff()  # the loops count their own failures

    # -- the Application -------------------------------------------------------------------
    def connect(self) -> None:
        """Wait for Redis (the one retry policy, one log line); a refused password raises RedisLinkError."""
        try:
            self.client = wait_for_redis(self.config.redis.url, self._policy, wait=self.stopping.wait,
                                         on_failure=self.redis_health.away)
        except RedisUnreachable:  # stopped while waiting
            return
        self.redis_health.back()

    def start(self) -> None:
        """Wait for Redis, load the model (the only time), add the config's streams, start the threads.
        A stop while Redis is away returns early (nothing started, or drain() hands it back)."""
        if self.client is None:
            self.connect()
        if self.stopping.is_set():  # a signal while Redis was away: nothing was taken, nothing to drain
            return
        try:
            self._start_work()
        except (*REDIS_TROUBLE, redis.RedisError):
            if not self.stopping.is_set():
                raise
            # stopped while Redis was away during start: drain() follows and hands back what was taken

    def _start_work(self) -> None:
        queue = JobQueue(self.client, self.keys, self.fleet.group, self.fleet.lease, self.fleet.keep_finished)
        self.book = CameraBook(self.client, self.keys, self.fleet.lease)
        self._retrying(queue.ensure_group)
        self._retrying(lambda: adopt_service_streams(self.book, f"{self.config.redis.prefix}service:streams",
                                                     self.config.sources))
        self.jobs = JobsRunning(self, queue)
        self.pipeline = StreamingPipeline(self.config, keep_alive=True)
        self.cameras = CamerasOwned(self, self.book)
        self.pipeline.redis.on_fenced = self._fenced
        self.pipeline.start()
        for spec in self.config_streams:  # a config file is trusted: local files anywhere (or under media_root)
            if is_camera(spec):  # the same id in two processes' configs is one camera of the book
                record = {"kind": "live", "max_frames": spec.max_frames, "gating": spec.gating}
                self._retrying(lambda s=spec, r=record: self.book.add(s.id, s.url, **{k: v for k, v in r.items() if v}))
            else:
                self.add_local(spec, "trusted")
        self._retrying(self._beat_once)
        for target, name in ((self._heartbeat_loop, "fleet-heartbeat"), (self._listen_wake, "fleet-wake")):
            threading.Thread(target=target, name=name, daemon=True).start()
        self._loop = threading.Thread(target=self._main_loop, name="fleet-main", daemon=True)
        self._loop.start()
        log.info("worker %s ready (capacity %d) on Redis %s", self.name, self.capacity, redact(self.config.redis.url))

    def ended(self) -> bool:
        """Ended by itself: the engine failed (the main loop shut the worker down)."""
        return self._finished is not None and not self.stopping.is_set()

    def failure(self) -> str | None:
        errors = self.pipeline.chain.errors if self.pipeline is not None else []
        return f"the engine failed: {errors[0]}" if errors else None

    def drain(self, timeout: float) -> bool:
        self.stopping.set()
        self.wakeup.set()
        if self._loop is not None:
            self._loop.join(timeout + 5)
        return self._shutdown(timeout)

    def stop(self) -> None:
        """A first signal during start(): stop waiting for Redis (start() returns, drain() follows)."""
        self.stopping.set()

    def abort(self) -> None:
        self.stopping.set()  # also ends a start() still waiting for Redis
        if self.pipeline is not None:
            self.pipeline.abort()

    def summary(self) -> Any:
        from segstream.pipeline.run import RunSummary, summarize

        if self.pipeline is None:  # stopped before the model loaded
            return RunSummary(streams={}, elapsed=time.time() - self.started, model_source="-", placeholder=False,
                              engine="-", stages=[], interrupted=True)
        return summarize(self.pipeline, time.time() - self.started)

    def ready(self) -> bool:
        """Model loaded, Redis answering (the results' sink and the fleet's loops alike), not stopping."""
        return bool(self.pipeline is not None and self.pipeline.ready() and not self.stopping.is_set()
                    and self.redis_health.since is None)

    def redis_state(self) -> tuple[bool, float | None]:
        """Whether Redis answers (the results' sink and the fleet's loops alike), and since when not."""
        sink_up = self.pipeline is None or self.pipeline.redis_up
        since = [t for t in (self.redis_health.since, self.pipeline and self.pipeline.redis_down_since) if t]
        return bool(sink_up and self.redis_health.since is None), (min(since) if since else None)

    # -- local streams (serve's API, the config) ---------------------------------------------
    def add_local(self, spec: StreamSpec, origin: Origin) -> StreamState:
        """Run a stream on this process only (its path is local here). Raises SourceRefused,
        SourceError, StreamExists."""
        source = open_admitted(spec, self.config, origin)
        with self._held:
            state = self.pipeline.add_source(source, gating=spec.gating)
            self.local.add(spec.id)
        return state

    def remove_local(self, stream_id: str) -> None:
        """Stop a local stream, drained (a file gets its EOS entry); raises UnknownStream."""
        self.pipeline.remove_stream(stream_id)
        with self._held:
            self.local.discard(stream_id)

    def most_cameras(self) -> int:
        """The most cameras this process may hold: serve.max_streams less its jobs and running local streams."""
        return self.config.serve.max_streams - (self.capacity - self.room()) + len(self.cameras or ())

    def room(self) -> int:
        """Streams this worker may still start: capacity less its jobs, cameras and running local streams."""
        with self._held:
            local = sum(1 for s in self.local if s in self.pipeline.sources)
        return self.capacity - len(self.jobs or ()) - len(self.cameras or ()) - local

    # -- Redis trouble -----------------------------------------------------------------------
    def _retrying(self, call: Callable[[], Any]) -> Any:
        """call() through Redis outages and refusals, under the one retry policy; once the worker is
        stopping, the last Redis error is raised."""
        return self._policy.call(call, wait=self.stopping.wait, on_failure=self.redis_health.away,
                                 retry_refusals=True, errors=REDIS_TROUBLE)

    # -- the main loop -----------------------------------------------------------------------
    def _main_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            if self.pipeline.chain.done():
                break
            try:
                if self._step():  # a Redis call succeeded
                    failures = 0
                    self.redis_health.back()
            except REDIS_TROUBLE as exc:
                failures += 1
                self.redis_health.away(exc)
                self.stopping.wait(self._backoff.compute(failures))
            except redis.ResponseError as exc:
                failures += 1
                if "NOGROUP" in str(exc):  # Redis lost its data (a restart without persistence)
                    log.warning("worker %s: the jobs' consumer group was gone (Redis restarted empty?); "
                                "made again", self.name)
                    self.jobs.queue.ensure_group()
                else:
                    self.redis_health.trouble("Redis answered an error", exc)
                self.stopping.wait(self._backoff.compute(failures))
            except Exception as exc:  # whatever a round meets, the loop goes on: jobs and cameras stay served
                failures += 1
                self.redis_health.trouble("a round of the main loop failed", exc)
                self.stopping.wait(self._backoff.compute(failures))
        if not self.stopping.is_set():  # the engine failed: shut down here, ended() tells the lifecycle
            self._shutdown(self.config.shutdown_timeout)

    def _step(self) -> bool:
        """One round of the main loop; True when it talked to Redis."""
        self._reap()
        talked = False
        if self.wakeup.is_set() or time.monotonic() - self._balanced >= self.fleet.heartbeat:
            self.wakeup.clear()
            self.cameras.balance()
            self._balanced = time.monotonic()
            talked = True
        free = self.room()
        if free <= 0:
            self.wakeup.wait(0.2)
            return talked
        block_ms = int(min(0.5, self.fleet.heartbeat) * 1000)  # a wake-up waits at most this long
        self.jobs.take(free, block_ms)
        return True

    def _reap(self) -> None:
        """Finish jobs that ended, stop what was taken over, forget finished removals."""
        self.jobs.reap()
        self.cameras.reap_lost()
        with self._held:  # local streams that ended and left the listing (pushed out by newer ones)
            self.local = {s for s in self.local if s in self.pipeline.registry}
        for stream_id, thread in list(self.removing.items()):
            if not thread.is_alive():
                self.removing.pop(stream_id, None)

    def _fenced(self, stream_id: str) -> None:
        """From the sink's writer thread: a write for this stream was refused by its fence."""
        self.jobs.fenced(stream_id)
        self.cameras.fenced(stream_id)

    # -- streams ending ----------------------------------------------------------------------
    def remove_stream(self, stream_id: str, then: Callable[[], Any] | None = None,
                      first: Callable[[], Any] | None = None) -> threading.Thread:
        """Stop a stream and wait for its drain in the background (`first` before, then `then`)."""
        def work() -> None:
            if first is not None:
                first()
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
        return thread

    def drop_stream(self, stream_id: str) -> None:
        """A stream whose results may no longer be published here: nothing waits for its drain."""
        state = self.pipeline.registry.get(stream_id)
        if state is not None:
            state.finish()
        self.remove_stream(stream_id)

    def wait_removed(self, stream_id: str) -> None:
        thread = self.removing.get(stream_id)
        if thread is not None:
            thread.join(self.config.shutdown_timeout + 1)

    # -- heartbeat and wake-ups ----------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.fleet.heartbeat):
            try:
                self._beat_once()
                self.redis_health.back()
            except REDIS_TROUBLE as exc:
                self.redis_health.away(exc)
            except Exception as exc:  # the next beat tries again; the leases expire by themselves meanwhile
                self.redis_health.trouble("a heartbeat failed", exc)

    def _beat_once(self) -> None:
        self.jobs.renew()
        self.cameras.renew()
        heartbeat.write_record(self.client, self.keys, self.name, self.snapshot(), self.fleet.lease)

    def _listen_wake(self) -> None:
        """Set `wakeup` on every message of the wake channel (the book changed somewhere)."""
        while not self.stopping.is_set():
            pubsub = None
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.keys.wake)
                while not self.stopping.is_set():
                    if pubsub.get_message(timeout=0.5) is not None:
                        self.wakeup.set()
            except REDIS_TROUBLE + (redis.RedisError,):
                self.stopping.wait(1.0)  # the main loop and the heartbeat say that Redis is away
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # a broken connection's close: nothing to free
                        pass

    def snapshot(self) -> dict[str, Any]:
        """What the heartbeat record and GET /status say about this worker."""
        streams = heartbeat.stream_entries(self.pipeline.registry.all() if self.pipeline else [])
        with self._held:
            local = len(self.local)
        jobs, cameras = len(self.jobs or ()), len(self.cameras or ())
        done, failed = (self.jobs.done, self.jobs.failed) if self.jobs else (0, 0)
        return {"name": self.name, "capacity": self.capacity, "load": jobs + cameras + local,
                "jobs": jobs, "cameras": cameras, "local": local, "fps": round(sum(s["fps"] for s in streams), 2),
                "jobs_done": done, "jobs_failed": failed, "started": self.started,
                **heartbeat.identity(), "stopping": int(self.stopping.is_set()),
                "redis_up": int(self.pipeline.redis_up if self.pipeline else 0), "streams": streams}

    # -- shutdown ------------------------------------------------------------------------------
    def _shutdown(self, timeout: float) -> bool:
        """Hand jobs back, drain every stream, release the leases, erase the record (once)."""
        with self._shutting:
            if self._finished is not None:
                return self._finished
            if self.pipeline is None:  # stopped while waiting for Redis: nothing was started
                self._finished = True
                return True
            self.jobs.hand_back()
            done = self.pipeline.shutdown(timeout)
            self.pipeline.close()
            try:
                self.cameras.release_all()
                heartbeat.erase_record(self.client, self.keys, self.name)
            except REDIS_TROUBLE:
                pass
            if not done and self.failure() is None:  # (the lifecycle says the drain ran out of time)
                log.info("worker %s: jobs cut short resume elsewhere after their last published frame", self.name)
            self._finished = done
            return done

