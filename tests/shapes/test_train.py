"""The training command trains, checkpoints, resumes and exports a loadable project checkpoint."""

from __future__ import annotations

import torch

from segstream.engines.checkpoint import read_model_config
from segstream.shapes.model import load_shapes_model
from segstream.shapes.train import main


def test_train_resume_and_export(tmp_path):
    common = ["--out", str(tmp_path), "--batch-size", "2", "--input-size", "96", "160",
              "--workers", "0", "--threads", "1", "--warmup", "1"]
    assert main(common + ["--steps", "2"]) == 0
    assert main(common + ["--steps", "3", "--resume"]) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 3
    # A warm restart runs --steps more steps on a new cycle counted from the resume point.
    assert main(common + ["--steps", "2", "--resume", "--new-cycle"]) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (state["step"], state["cycle_step"]) == (5, 3)
    exported = tmp_path / "shapes_final.safetensors"
    config = read_model_config(exported)
    assert config.input_size == (96, 160) and config.class_names[1:] == ("circle", "square", "triangle", "star")
    model, _ = load_shapes_model(exported)
    with torch.inference_mode():
        out = model([torch.rand(3, 90, 160)])[0]
    assert set(out) >= {"boxes", "scores", "labels", "masks"}
