"""The file jobs one worker runs: taking them from the queue (fleet/jobs.py), starting each where
its last published frame left off, finishing it once its EOS is on Redis, failing it alone when it
cannot run, and handing it back (fenced, claimable at once) when the worker stops."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from segstream.fleet.jobs import Claim, JobQueue, MalformedJob
from segstream.pipeline.stream_spec import StreamSpec, make_source
from segstream.pipeline.streams import SourceError

if TYPE_CHECKING:
    from segstream.fleet.worker import Worker

log = logging.getLogger("segstream.fleet.worker")


@dataclass
class RunningJob:
    claim: Claim
    lost: bool = False


class JobsRunning:
    """The jobs `worker` holds, by stream id; changed on the main loop, read by the heartbeat."""

    def __init__(self, worker: "Worker", queue: JobQueue) -> None:
        self.worker = worker
        self.queue = queue
        self.held: dict[str, RunningJob] = {}
        self.lock = threading.Lock()
        self.done = 0
        self.failed = 0

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self.held

    def __len__(self) -> int:
        return len(self.held)

    def _drop(self, stream_id: str) -> None:
        with self.lock:
            self.held.pop(stream_id, None)

    def take(self, free: int, block_ms: int) -> None:
        """Take up to `free` jobs (silent workers' first, then new ones) and start them."""
        w = self.worker
        for entry_id, job_id in self.queue.take(w.name, free, block_ms):
            try:
                self.start(entry_id, job_id)
            except w.redis_trouble:
                raise
            except Exception as exc:  # whatever a job holds, it fails alone: the worker keeps running
                reason = f"could not start: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"[:300]
                log.warning("job %s failed: %s", job_id, reason)
                self.failed += 1
                for stream_id, job in list(self.held.items()):  # registered before it failed: nothing runs for it
                    if job.claim.job_id == job_id:
                        self._drop(stream_id)
                        w.drop_stream(stream_id)
                self.queue.reject(entry_id, {"job": job_id}, reason, job_id)

    def start(self, entry_id: str, job_id: str) -> None:
        w = self.worker
        try:
            claim = self.queue.claim(w.name, entry_id, job_id)
        except MalformedJob as exc:
            self.failed += 1
            log.warning("job %s failed: %s (moved to %s:dead)", job_id, exc.reason, w.keys.jobs)
            return
        if claim is None:
            return
        if claim.attempts > w.fleet.max_attempts:
            last = claim.record.get("worker") or "unknown"
            reason = (f"given up after {w.fleet.max_attempts} attempts: the worker running it stopped "
                      f"each time (last: {last})")
            if self.queue.finish(claim, "failed", reason=reason):
                self.failed += 1
            log.warning("job %s (%s) failed: %s", job_id, claim.stream_id, reason)
            return
        resume = self.queue.resume_point(claim)
        if resume.eos_frames is not None:  # its EOS landed; the worker died before acknowledging
            self.queue.finish(claim, "done", frames=resume.eos_frames)
            return
        w.wait_removed(claim.stream_id)
        if claim.stream_id in w.pipeline.sources or claim.stream_id in self.held:
            self.queue.finish(claim, "failed", reason=f"stream {claim.stream_id} is already being published on {w.name}")
            return
        try:  # the job's source is judged by this worker's policy before anything is opened
            spec = StreamSpec(id=claim.stream_id, url=claim.source, kind="file", start_frame=resume.start_frame,
                              first_track_id=resume.first_track_id)
            source = make_source(spec, w.config, "trusted")
            source.check()
        except (SourceError, ValueError) as exc:
            reason = str(exc).splitlines()[0]
            self.queue.finish(claim, "failed", reason=reason)
            self.failed += 1
            log.warning("job %s (%s) failed: %s", job_id, claim.stream_id, reason)
            return
        w.pipeline.redis.fence(claim.stream_id, w.keys.job_fence(job_id), claim.token)
        with self.lock:
            self.held[claim.stream_id] = RunningJob(claim)
        w.pipeline.add_source(source)
        if resume.start_frame:
            log.info("job %s (%s): resuming at frame %d (attempt %d)", job_id, claim.stream_id,
                     resume.start_frame, claim.attempts)

    def reap(self) -> None:
        """Finish jobs whose EOS is published or whose source failed; drop what was lost."""
        w = self.worker
        pipeline = w.pipeline
        for stream_id, job in list(self.held.items()):
            state = pipeline.registry.get(stream_id)
            claim = job.claim
            if job.lost:
                log.warning("job %s (%s) was taken over by another worker; stopped here", claim.job_id, stream_id)
                w.drop_stream(stream_id)
                self._drop(stream_id)
                continue
            failure = pipeline.chain.producer_error(stream_id)  # this job's: cleared when its source was added
            error = str(failure) if failure is not None else (state.error if state is not None else None)
            if state is not None and state.eos_frames is not None:
                if self.queue.finish(claim, "done", frames=state.eos_frames, reason=error or ""):
                    self.done += 1
                self._drop(stream_id)
                w.remove_stream(stream_id, then=lambda sid=stream_id: pipeline.redis.forget(sid))
            elif error is not None and stream_id not in pipeline.chain.producers():
                if self.queue.finish(claim, "failed", reason=error.splitlines()[0]):
                    self.failed += 1
                log.warning("job %s (%s) failed: %s", claim.job_id, stream_id, error)
                self._drop(stream_id)
                w.drop_stream(stream_id)

    def renew(self) -> None:
        """From the heartbeat: refresh every claim; one another worker holds now is lost."""
        with self.lock:
            held = list(self.held.values())
        for job in held:
            if not job.lost and not self.queue.refresh(job.claim, self.worker.name):
                job.lost = True

    def fenced(self, stream_id: str) -> None:
        with self.lock:
            job = self.held.get(stream_id)
        if job is not None:
            job.lost = True

    def hand_back(self) -> None:
        """At shutdown: nothing more leaves this process for a job, not even the interrupted EOS of
        its source; then the next worker resumes after the last frame that landed."""
        w = self.worker
        for stream_id, job in list(self.held.items()):
            w.pipeline.redis.fence(stream_id, w.keys.job_fence(job.claim.job_id), "handed-back")
            try:
                if not job.lost and self.queue.hand_back(job.claim, w.name):
                    log.info("job %s (%s): handed back", job.claim.job_id, stream_id)
            except w.redis_trouble:
                pass  # its claim goes idle: another worker takes it after fleet.lease
