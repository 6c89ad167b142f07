"""A fleet of `segstream worker`s on one Redis: file jobs through a consumer group, cameras through
leases, both fenced so a worker that lost its claim cannot publish (docs/scale-out.md).

keys: the Redis key names; jobs: the jobs stream and its Lua scripts; cameras: the wanted cameras
and their leases; worker: one worker process around a StreamingPipeline; status: the fleet at a
glance; commands: `segstream submit|worker|status|cameras`. Only `worker` knows the pipeline.
"""
