"""Where the fleet keeps its state in Redis (all under the results' prefix, `segstream:` by default).

    <p>fleet:jobs                 stream of jobs (field `job`), consumer group `fleet.group`
    <p>fleet:job:<job>            hash: source, stream_id, state, attempts, worker, reason, ...
    <p>fleet:job-index            zset job -> submit time (what `segstream status` lists)
    <p>fleet:fence:job:<job>      fencing token of a job's current claim (INCR on each claim)
    <p>fleet:cameras              hash camera id -> JSON {"url": ..., ...} (CameraRecord): the camera book
    <p>fleet:wake                 pub/sub channel: a message makes every worker balance its cameras at once
    <p>fleet:camera:<id>:owner    the owning worker's name, SET NX PX lease, renewed by heartbeat
    <p>fleet:fence:camera:<id>    fencing token of a camera's current lease
    <p>fleet:worker:<name>        hash: the worker's heartbeat (expires after the lease)
    <p>fleet:workers              zset worker -> last heartbeat (unix s)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FleetKeys:
    prefix: str = "segstream:"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}fleet:jobs"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}fleet:job:{job_id}"

    @property
    def job_index(self) -> str:
        return f"{self.prefix}fleet:job-index"

    def job_fence(self, job_id: str) -> str:
        return f"{self.prefix}fleet:fence:job:{job_id}"

    @property
    def cameras(self) -> str:
        return f"{self.prefix}fleet:cameras"

    @property
    def wake(self) -> str:
        return f"{self.prefix}fleet:wake"

    def camera_owner(self, camera_id: str) -> str:
        return f"{self.prefix}fleet:camera:{camera_id}:owner"

    def camera_fence(self, camera_id: str) -> str:
        return f"{self.prefix}fleet:fence:camera:{camera_id}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}fleet:worker:{name}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}fleet:workers"

    def results(self, stream_id: str) -> str:
        """The result stream a job or camera publishes to, as `segstream run` would."""
        return f"{self.prefix}{stream_id}"
