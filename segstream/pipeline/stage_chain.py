"""The stages of a StreamingPipeline in their order, and the edge in front of each:

    lanes --> [Gate -->] Preprocess --> [Features -->] Inference --> Postprocess --> [Tracking -->]
              [CarryOver -->] Publish

Gate and CarryOver are there when streams may be motion-gated (pipeline/stages/gating.py),
Features when the engine is split (pipeline/stages/inference.py), Tracking when tracking is on.
What each stage does is in its module; what the edges do (block, drop oldest, light markers) is
in pipeline/queues.py. This module only says which stage follows which, through which edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from segstream.engines.protocol import Engine, takes_host_arrays
from segstream.pipeline.config import RunConfig
from segstream.pipeline.messages import Frame
from segstream.pipeline.queues import EdgePolicy
from segstream.pipeline.runtime import Chain
from segstream.pipeline.stages.gating import Carried, CarryOver, Gate
from segstream.pipeline.stages.inference import engine_stages
from segstream.pipeline.stages.postprocess import Postprocess
from segstream.pipeline.stages.preprocess import Preprocess
from segstream.pipeline.stages.publish import Publish
from segstream.pipeline.stages.tracking import Tracking

#: Carried markers (frames the gate skipped) waiting at once on one queue after the gate, at most:
#: they take no room from the engine's work (see `stage_chain`), this only bounds memory.
CARRIED_IN_FLIGHT = 64


@dataclass
class StageChain:
    """The chain (not started) and the stage whose counters say how full batches were."""

    chain: Chain
    inference: Any


def _is_carried(item: Any) -> bool:
    return isinstance(item, Carried)


def stage_chain(config: RunConfig, engine: Engine, publish: Publish, tracking: Tracking | None, gate: Gate | None,
                on_gate_drop: Callable[[Frame], None], regions: bool, keep_alive: bool) -> StageChain:
    """Wire the stages. gate: None for a run that gates nothing (the chain is then as it was
    without gating); on_gate_drop(frame): a camera frame past the gate was dropped while it waited
    for the engine; regions: whether postprocess rebuilds each instance's mask region on the host
    (drawing and the tracker's mask IoU need it)."""
    engine_part = engine_stages(engine, config.engine.max_consecutive_errors, config.engine.overlap,
                                config.engine.threads)
    batch, q = config.engine.batch_size, config.queues
    gating = gate is not None

    # With a gate, a Carried marker (a frame the engine skips) never waits for room the engine's
    # work needs: it does not count against any queue after the gate (up to CARRIED_IN_FLIGHT of
    # them per queue, a safety bound), so the gate, on its own thread, keeps taking the cameras'
    # frames while the engine is busy with a burst. A camera frame the engine must run on waits in
    # the gate's outbox (as many per camera as a camera lane holds: StreamingPipeline sizes it as
    # cameras come and go); when full, the busiest camera loses its newest waiting one: a camera
    # loses only frames the model would have had to run on. Markers keep their place in the one
    # FIFO per edge, so each stream's entries still reach publish in order.
    def after_gate(capacity: int) -> "int | EdgePolicy":
        if not gating:
            return capacity
        return EdgePolicy(capacity, light=_is_carried, light_capacity=CARRIED_IN_FLIGHT)

    gate_outbox: list["int | EdgePolicy"] = []
    if gate is not None:
        gate_outbox = [EdgePolicy(max(batch, q.live_frames), "drop_oldest", droppable=gate.droppable,
                                  on_drop=on_gate_drop, light=_is_carried, light_capacity=CARRIED_IN_FLIGHT,
                                  # a camera in a burst loses its own frames, not another's
                                  owner=lambda item: getattr(item, "stream_id", None))]
    stages = [
        *([gate] if gate is not None else []),
        Preprocess(engine.config, engine.device, batch, host_arrays=takes_host_arrays(engine)),
        *engine_part,  # features (a split engine's trunk) and inference
        # GPU detections are encoded a batch at a time on the device; the mask regions that
        # drawing (video, the service's viewer) and the tracker's mask IoU need are rebuilt
        # from the counts on the host.
        Postprocess(engine.config.class_names, engine.config.mask_threshold, config.engine.max_consecutive_errors,
                    take=batch, regions=regions),
        *([tracking] if tracking is not None else []),
        *([CarryOver()] if gating else []),
        publish,
    ]
    queue_sizes = ([max(batch, q.file_frames)] + gate_outbox + [after_gate(q.batches)] * len(engine_part)
                   + [after_gate(q.results)] * 2 + ([after_gate(q.results)] if tracking is not None else [])
                   + ([after_gate(q.results)] if gating else []))
    chain = Chain(producers=[], stages=stages, queue_sizes=queue_sizes, batchable=lambda item: isinstance(item, Frame),
                  max_batch_wait=config.engine.max_batch_wait_ms / 1000.0, keep_alive=keep_alive)
    return StageChain(chain, engine_part[-1])
