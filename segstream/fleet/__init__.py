"""A fleet of processes on one Redis (`segstream worker`, and `segstream serve`: a worker with the
HTTP write API): file jobs through a consumer group, cameras of one camera book through leases,
both fenced so a process that lost its claim cannot publish (docs/scale-out.md).

keys: the Redis key names; jobs: the jobs stream and its Lua scripts; jobs_running: the jobs one
worker runs; cameras: the camera book and its leases; cameras_owned: the cameras one worker runs
and its balancing; heartbeat: the workers' records; worker: one process around a
StreamingPipeline (an Application of commands/lifecycle.py); control: what the HTTP app calls on
a fleet process; status: the fleet at a glance. Never imports segstream.service.
"""
