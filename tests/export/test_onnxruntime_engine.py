"""--engine onnxruntime publishes what --engine torch publishes, on frames and on a held-out clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from export_models import INPUT_SIZE, frames
from segstream.engines.factory import EngineError, open_engine
from segstream.engines.onnxruntime_engine import OnnxRuntimeEngine
from segstream.engines.torch_engine import TorchEngine
from segstream.pipeline.config import parse_config
from segstream.pipeline.run import run
from segstream.pipeline.sinks.collect import CollectSink


def test_onnxruntime_engine_equals_torch_engine_on_frames(model, onnx_file):
    engine = OnnxRuntimeEngine(model, "cpu", 2, onnx_path=str(onnx_file))
    images = frames(2, seed=11)
    sizes = [INPUT_SIZE, (INPUT_SIZE[0] - 40, INPUT_SIZE[1])]
    images[1, :, sizes[1][0]:] = 0
    want = TorchEngine(model, "cpu", 2).infer(images, sizes)
    got = engine.infer(images, sizes)
    for g, w in zip(got, want):
        assert len(g) == len(w) == model.config.max_detections
        assert torch.equal(g.classes, w.classes)
        torch.testing.assert_close(g.boxes, w.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(g.scores, w.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(g.masks, w.masks, atol=1e-4, rtol=0)
    # A partial batch runs in the fixed-batch graph, padded, and gives the same first image.
    (single,) = engine.infer(images[:1], sizes[:1])
    torch.testing.assert_close(single.boxes, got[0].boxes)


def _published(clip, engine, batch):
    sink = CollectSink()
    config = parse_config({"redis": {"url": None}, "engine": {"batch_size": batch}, "output": {"progress": False}})
    run([str(clip)], config, engine=engine, extra_sinks=[sink])
    return sorted(sink.results, key=lambda r: r.frame.index)


def _iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


@pytest.mark.parametrize("seed, size", [(901, (320, 240)), (902, (400, 224))])
def test_onnxruntime_publishes_the_torch_instances_on_held_out_clips(tmp_path, model, onnx_file, seed, size):
    from segstream.shapes.clip import render_clip

    clip = tmp_path / "heldout.mp4"
    render_clip(clip, tmp_path / "heldout.json", seed=seed, frames=6, size=size)
    want = _published(clip, TorchEngine(model, "cpu", 2), 2)
    got = _published(clip, OnnxRuntimeEngine(model, "cpu", 2, onnx_path=str(onnx_file)), 2)
    assert [r.frame.index for r in got] == [r.frame.index for r in want] == list(range(6))
    matched = 0
    for g, w in zip(got, want):
        assert len(g.instances) == len(w.instances), f"frame {g.frame.index}"
        for mine, theirs in zip(g.instances, w.instances):
            assert mine.class_id == theirs.class_id
            assert _iou(mine.box, theirs.box) >= 0.99
            if mask_utils.area(theirs.rle) or mask_utils.area(mine.rle):
                mask_iou = mask_utils.iou([mine.rle], [theirs.rle], [0])[0, 0]
                assert mask_iou >= 0.98, f"frame {g.frame.index}: mask IoU {mask_iou}"
            matched += 1
    assert matched >= 6 * 10


def test_onnxruntime_engine_refuses_cuda_and_mismatched_files(model, onnx_file):
    with pytest.raises(EngineError, match="--device cpu"):
        OnnxRuntimeEngine(model, "cuda", 2, onnx_path=str(onnx_file))
    with pytest.raises(EngineError, match="batch 2"):
        OnnxRuntimeEngine(model, "cpu", 4, onnx_path=str(onnx_file))
    other = model.config.replace(input_size=(128, 128))
    with pytest.raises(EngineError, match="128x128"):
        OnnxRuntimeEngine(type(model)(other, model.network, True, "x"), "cpu", 2, onnx_path=str(onnx_file))


def test_open_engine_builds_and_caches_the_onnx_file(model, tmp_path, monkeypatch):
    monkeypatch.setattr("segstream.engines.artifacts.cache_root", lambda: tmp_path)
    engine = open_engine("onnxruntime", model, "cpu", 1)
    assert engine.onnx_path.parent == tmp_path / "onnx" and engine.onnx_path.is_file()
    stamp = engine.onnx_path.stat().st_mtime_ns
    again = open_engine("onnxruntime", model, "cpu", 1)
    assert again.onnx_path == engine.onnx_path and again.onnx_path.stat().st_mtime_ns == stamp
    (result,) = again.infer(frames(1), [INPUT_SIZE])
    assert len(result) == model.config.max_detections and isinstance(np.asarray(result.boxes), np.ndarray)
