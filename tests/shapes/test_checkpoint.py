"""The bundled shapes checkpoint: what it carries, that it detects shapes, that tampering is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.engines.checkpoint import CheckpointError, read_model_config
from segstream.shapes.clip import render_clip
from segstream.shapes.evaluate import coco_metrics, predict_clip
from segstream.shapes.model import SHAPES_CHECKPOINT, load_shapes_model
from servers import segstream_cli

pytestmark = pytest.mark.skipif(not SHAPES_CHECKPOINT.is_file(), reason="bundled shapes checkpoint not present")


def test_checkpoint_describes_its_model():
    config = read_model_config(SHAPES_CHECKPOINT)
    assert config.architecture == "compact"
    assert config.class_names == ("__background__", "circle", "square", "triangle", "star")
    assert config.input_size[0] % 32 == 0 and config.input_size[1] % 32 == 0
    assert SHAPES_CHECKPOINT.stat().st_size <= 20 * 1024 * 1024


def test_checkpoint_segments_a_fresh_clip(tmp_path):
    video, gt = tmp_path / "fresh.mp4", tmp_path / "fresh.json"
    # Short scenes: a few backgrounds and object sets in 24 frames.
    render_clip(video, gt, seed=2024, frames=24, scene_frames=(6, 8))
    model, config = load_shapes_model()
    metrics = coco_metrics(gt, predict_clip(model, video, config.class_names, config.mask_threshold))
    assert metrics["frames"] == 24
    # A floor well below the model's held-out figures (docs/model.md), above anything untrained.
    assert metrics["mask_ap50"] >= 0.5, metrics
    assert metrics["mask_ap"] >= 0.35, metrics


def test_eval_scores_a_clip_through_the_pipeline_and_redis(tmp_path):
    """`segstream eval` runs the whole pipeline into a private Redis, reads it back and scores it."""
    video, gt = tmp_path / "eval.mp4", tmp_path / "eval.json"
    render_clip(video, gt, seed=2025, frames=16, scene_frames=(6, 8))
    result = segstream_cli("eval", str(video), str(gt), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["published"] == 16 and metrics["frames"] == 16
    assert metrics["mask_ap50"] >= 0.5 and metrics["fps"] > 0, metrics
    assert metrics["objects"] == len(json.loads(gt.read_text())["annotations"])
    assert metrics["found"] >= 0.5 and metrics["class_agnostic_mask_ap50"] >= 0.5, metrics
    text = segstream_cli("eval", str(video), str(gt))
    assert text.returncode == 0 and "mask AP50" in text.stdout and "objects found" in text.stdout, text.stdout


def test_checkpoint_segments_clips_of_an_independent_generator(tmp_path):
    """The domain is a contract: clips drawn by other code that follows it are segmented too."""
    video, gt = tmp_path / "independent.mp4", tmp_path / "independent.json"
    renderer = Path(__file__).parents[2] / "benchmarks" / "independent_shapes.py"
    subprocess.run([sys.executable, str(renderer), str(video), str(gt), "--seed", "31", "--frames", "40"],
                   check=True, capture_output=True)
    model, config = load_shapes_model()
    metrics = coco_metrics(gt, predict_clip(model, video, config.class_names, config.mask_threshold))
    assert metrics["frames"] == 40
    assert metrics["mask_ap50"] >= 0.5, metrics
    assert metrics["mask_ap"] >= 0.35, metrics


def test_tampered_checkpoint_is_rejected(tmp_path):
    copy = tmp_path / "tampered.safetensors"
    shutil.copy(SHAPES_CHECKPOINT, copy)
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF  # a weight byte: the tensors follow the header
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="integrity"):
        load_shapes_model(copy)


def test_truncated_checkpoint_is_rejected(tmp_path):
    copy = tmp_path / "truncated.safetensors"
    copy.write_bytes(SHAPES_CHECKPOINT.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_shapes_model(copy)
