"""Helpers for the live-operation tests: quick engines, a run on a thread, reading a stream."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import torch

from segstream.engines.models import placeholder_config
from segstream.engines.protocol import Detections
from segstream.pipeline.run import RunSummary, run
from segstream.pipeline.streaming import StreamingPipeline
from servers import wait_for  # noqa: E402


class SlowEngine:
    """An engine that takes `delay` seconds a batch and finds nothing (no model cost)."""

    name = "slow"

    def __init__(self, delay: float, fail_on: Callable[[int], bool] = lambda call: False) -> None:
        self.config = placeholder_config("shapes").replace(input_size=(128, 224))
        self.device = torch.device("cpu")
        self.max_batch = 8
        self.delay = delay
        self.calls = 0
        self.fail_on = fail_on

    def infer(self, images, image_sizes):
        self.calls += 1
        time.sleep(self.delay)
        if self.fail_on(self.calls):
            raise RuntimeError(f"CUDA error: an illegal memory access (call {self.calls})")
        empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 28, 28))
        return [empty for _ in range(images.shape[0])]


def all_entries(client, key: str) -> list[dict]:
    return [json.loads(f[b"data"]) for _, f in client.xrange(key)]


def frames_of(client, key: str) -> list[dict]:
    return [m for m in all_entries(client, key) if "frame" in m]


def statuses_of(client, key: str) -> list[str]:
    return [m["status"] for m in all_entries(client, key) if "status" in m]


class RunInThread:
    """`segstream.pipeline.run.run` on a thread, stopped with stop(); the summary in .summary."""

    def __init__(self, locations: list[str], config, **kwargs: Any) -> None:
        self.pipelines: list[StreamingPipeline] = []
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.summary = run(locations, config, on_pipeline=self.pipelines.append, **kwargs)
            except BaseException as exc:  # reported by stop()
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)

    def __enter__(self) -> "RunInThread":
        self.thread.start()
        wait_for(lambda: self.pipelines or not self.thread.is_alive(), 60, "the pipeline to start")
        return self

    @property
    def pipeline(self) -> StreamingPipeline:
        return self.pipelines[0]

    def stop(self, timeout: float = 30) -> RunSummary:
        if self.pipelines:
            self.pipeline.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not stop"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary

    def __exit__(self, *exc: Any) -> None:
        if self.thread.is_alive():
            self.stop()


def publish_times(client, key: str) -> list[float]:
    """Unix publish time of each frame entry (from its Redis id, milliseconds)."""
    return [int(entry_id.split(b"-")[0]) / 1000 for entry_id, f in client.xrange(key)
            if b'"frame"' in f[b"data"]]
