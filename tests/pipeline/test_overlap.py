"""A split engine's trunk and heads run on two threads, one batch apart: the same entries, in order."""

from __future__ import annotations

import json

import pytest
import torch

from media import write_clip
from segstream.engines.models import load_model
from segstream.engines.torch_engine import TorchEngine
from segstream.pipeline.stages.faults import StageFailed
from segstream.pipeline.run import run


def entries(client, stream_id: str) -> list[dict]:
    return [json.loads(fields[b"data"]) for _, fields in client.xrange(f"segstream:{stream_id}")]


def _stage_names(summary) -> list[str]:
    return [s.name for s in summary.stages]


def test_two_streams_overlapped_publish_what_the_serial_engine_publishes(tmp_path, fast_config, redis_client):
    clips = [str(write_clip(tmp_path / f"c{i}.mp4", frames=9 + i, width=320 - 64 * i)) for i in range(2)]
    fast_config.model.score_threshold = 0.0  # many instances to compare

    serial_config = fast_config.model_copy(deep=True)
    serial_config.engine.overlap = False
    serial = run(clips, serial_config, stream_ids=["s0", "s1"])
    overlapped = run(clips, fast_config, stream_ids=["o0", "o1"])

    assert "features" not in _stage_names(serial)
    assert _stage_names(overlapped)[:3] == ["preprocess", "features", "inference"]
    compared = 0
    for s, o in (("s0", "o0"), ("s1", "o1")):
        a, b = entries(redis_client, s), entries(redis_client, o)
        assert [m.get("frame") for m in b] == [m.get("frame") for m in a], "every frame once, in order, then EOS"
        for ma, mb in zip(a[:-1], b[:-1]):
            assert [i["class_id"] for i in ma["instances"]] == [i["class_id"] for i in mb["instances"]]
            for ia, ib in zip(ma["instances"], mb["instances"]):
                assert max(abs(x - y) for x, y in zip(ia["box"], ib["box"])) < 0.05
                compared += 1
    assert compared > 20


class FlakyTrunk(TorchEngine):
    """The torch engine whose first half fails on chosen calls (1-based)."""

    def __init__(self, fail_on) -> None:
        super().__init__(load_model("shapes", input_size=(128, 224)), "cpu", 1)
        self.calls = 0
        self.fail_on = fail_on

    def extract(self, images: torch.Tensor, image_sizes):
        self.calls += 1
        if self.fail_on(self.calls):
            raise RuntimeError("out of memory in the trunk")
        return super().extract(images, image_sizes)


def test_a_trunk_error_on_one_batch_is_published_and_the_run_goes_on(tmp_path, fast_config, redis_client):
    clip = write_clip(tmp_path / "bumpy.mp4", frames=8)
    summary = run([str(clip)], fast_config, engine=FlakyTrunk(lambda call: call == 4))
    assert "features" in _stage_names(summary)
    published = entries(redis_client, "bumpy")
    assert [m["frame"] for m in published[:-1]] == list(range(8)) and published[-1]["eos"]
    failed = [m for m in published if "error" in m]
    assert [m["frame"] for m in failed] == [3] and failed[0]["instances"] == []
    assert "out of memory in the trunk" in failed[0]["error"]


def test_a_trunk_that_keeps_failing_stops_the_run_with_one_line(tmp_path, fast_config, redis_client):
    clip = write_clip(tmp_path / "broken.mp4", frames=20)
    fast_config.engine.max_consecutive_errors = 3
    with pytest.raises(StageFailed, match="engine failed on 3 batches in a row"):
        run([str(clip)], fast_config, engine=FlakyTrunk(lambda call: True))
    failed = entries(redis_client, "broken")
    assert [m["frame"] for m in failed][:2] == [0, 1] and all("error" in m for m in failed[:2])
