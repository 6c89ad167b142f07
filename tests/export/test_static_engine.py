"""--engine static (the fixed-shape graph in torch, on the project's kernels) finds what eager torch finds.

On the CPU the graph runs eagerly; on a GPU it is captured as CUDA graphs and replayed (the CUDA
tests below are skipped without one and run in benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import json

import pytest
import torch
from pycocotools import mask as mask_utils

from export_models import INPUT_SIZE, frames, small_model
from servers import segstream_cli
from segstream.engines.factory import EngineError, open_engine
from segstream.engines.protocol import Engine
from segstream.engines.static_engine import StaticEngine
from segstream.engines.torch_engine import TorchEngine

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def assert_same(got, want, atol=1e-4):
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        assert torch.equal(g.classes.cpu(), w.classes.cpu())
        torch.testing.assert_close(g.boxes.cpu(), w.boxes.cpu(), atol=atol, rtol=0)
        torch.testing.assert_close(g.scores.cpu(), w.scores.cpu(), atol=atol, rtol=0)
        torch.testing.assert_close(g.masks.cpu(), w.masks.cpu(), atol=atol, rtol=0)


def test_static_engine_equals_torch_engine_on_full_and_partial_batches(model):
    engine = open_engine("static", model, "cpu", 2)
    assert isinstance(engine, Engine) and engine.name == "static"
    images = frames(2, seed=11)
    sizes = [INPUT_SIZE, (INPUT_SIZE[0] - 40, INPUT_SIZE[1])]
    images[1, :, sizes[1][0]:] = 0
    want = TorchEngine(model, "cpu", 2).infer(images, sizes)
    assert all(len(w) > 0 for w in want)
    assert_same(engine.infer(images, sizes), want)
    assert_same(engine.infer(images[1:], sizes[1:]), want[1:])
    engine.close()
    engine.close()  # idempotent


def test_partial_batches_share_power_of_two_graphs(model):
    engine = StaticEngine(model, "cpu", 16)
    assert [engine.graph_batch(n) for n in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert StaticEngine(model, "cpu", 6).graph_batch(5) == 6


def test_static_engine_refuses_what_it_cannot_run(model):
    with pytest.raises(EngineError, match="--engine onnxruntime offers fp32"):
        open_engine("onnxruntime", model, "cpu", 1, precision="bf16")
    with pytest.raises(EngineError, match="--precision int8"):
        StaticEngine(model, "cpu", 1, precision="int8")
    with pytest.raises(ValueError, match="exceeds max_batch 1"):
        StaticEngine(model, "cpu", 1).infer(frames(2), [INPUT_SIZE] * 2)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_trunk_keeps_the_detections_close(precision):
    # Random weights give near-tied scores, so only a trained-looking separation is compared:
    # the same count and classes, boxes within a pixel on most rows.
    model = small_model(seed=3)
    images = frames(1, seed=5)
    want = TorchEngine(model, "cpu", 1).infer(images, [INPUT_SIZE])[0]
    got = StaticEngine(model, "cpu", 1, precision=precision).infer(images, [INPUT_SIZE])[0]
    assert got.boxes.dtype == torch.float32 and got.masks.dtype == torch.float32
    assert 0 < len(got) <= model.config.max_detections and len(want) > 0
    assert ((got.masks >= 0) & (got.masks <= 1)).all()


def _published(redis_client, stream: str) -> list[dict]:
    return [json.loads(f[b"data"]) for _, f in redis_client.xrange(f"segstream:{stream}")][:-1]


def _box_iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def test_segstream_run_engine_static_publishes_the_torch_instances(tmp_path, redis_url, redis_client):
    """The issue's CPU acceptance: same count per frame, box IoU >= 0.99, mask IoU >= 0.98."""
    from segstream.shapes.clip import render_clip

    clip = tmp_path / "heldout.mp4"
    render_clip(clip, tmp_path / "heldout.json", seed=904, frames=6, size=(480, 270))
    runs = {}
    for engine in ("torch", "static"):
        done = segstream_cli("run", str(clip), "--engine", engine, "--batch-size", "2", "--redis", redis_url,
                             "--stream-id", engine, "--no-progress", "--file")
        assert done.returncode == 0, done.stderr
        runs[engine] = _published(redis_client, engine)
    assert [m["frame"] for m in runs["static"]] == [m["frame"] for m in runs["torch"]] == list(range(6))
    instances, box_ious, mask_ious = 0, [1.0], [1.0]
    for mine, theirs in zip(runs["static"], runs["torch"]):
        assert len(mine["instances"]) == len(theirs["instances"]), f"frame {mine['frame']}"
        for a, b in zip(mine["instances"], theirs["instances"]):
            assert a["class_id"] == b["class_id"]
            box_ious.append(_box_iou(a["box"], b["box"]))
            assert box_ious[-1] >= 0.99
            ra = {"size": a["mask"]["size"], "counts": a["mask"]["counts"].encode()}
            rb = {"size": b["mask"]["size"], "counts": b["mask"]["counts"].encode()}
            if mask_utils.area(ra) or mask_utils.area(rb):
                mask_ious.append(float(mask_utils.iou([ra], [rb], [0])[0, 0]))
                assert mask_ious[-1] >= 0.98, f"frame {mine['frame']}"
            instances += 1
    assert instances >= 6, "the bundled model finds shapes on its own domain"
    # The figure docs/gpu.md quotes (pytest -s shows it).
    print(f"\nstatic vs torch: {len(runs['torch'])} frames, {instances} instances, "
          f"min box IoU {min(box_ious):.4f}, min mask IoU {min(mask_ious):.4f}")


@needs_cuda
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-3), ("fp16", None), ("bf16", None)])
def test_cuda_graph_replay_equals_eager_static_graph(model, precision, atol):
    images = frames(2, seed=11).cuda()
    sizes = [INPUT_SIZE, (INPUT_SIZE[0] - 40, INPUT_SIZE[1])]
    graphed = StaticEngine(model, "cuda", 2, precision=precision)
    eager = StaticEngine(model, "cuda", 2, precision=precision, cuda_graphs=False)
    first = graphed.infer(images, sizes)
    again = graphed.infer(images, sizes)  # a replay: same static buffers, same answer
    assert graphed.captured_batches() == [2]
    (single,) = graphed.infer(images[:1], sizes[:1])
    assert graphed.captured_batches() == [1, 2]
    assert_same(again, first, atol=0)
    assert_same([single], first[:1], atol=1e-3)
    three = StaticEngine(model, "cuda", 3, precision=precision)
    three.warm_up()
    assert three.captured_batches() == [1, 2, 3]
    assert_same(three.infer(images, sizes), first, atol=1e-3 if atol else 5e-2)
    if atol is not None:
        assert_same(first, eager.infer(images, sizes), atol=atol)
        assert_same(first, TorchEngine(model, "cuda", 2).infer(images, sizes), atol=atol)
    graphed.close()
