"""Models load from the places a user keeps them, never by unpickling code."""

from __future__ import annotations

import json

import torch
import torchvision

from media import write_clip
from segstream.engines.checkpoint import load_checkpoint, save_checkpoint
from segstream.engines.models import build_network, load_model, placeholder_config
from segstream.pipeline.run import run


def test_coco_preset_runs_from_a_local_weights_file_with_coco_labels(tmp_path, fast_config, redis_client):
    network = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    weights = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(network.state_dict(), weights)
    clip = write_clip(tmp_path / "coco.mp4", frames=2)
    fast_config.model.name = "maskrcnn_resnet50_fpn"
    fast_config.model.weights = str(weights)
    fast_config.model.score_threshold = 0.0
    summary = run([str(clip)], fast_config)
    assert summary.model_source == str(weights) and not summary.placeholder
    messages = [json.loads(f[b"data"]) for _, f in redis_client.xrange("segstream:coco")]
    coco_names = set(torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"])
    labels = {inst["label"] for m in messages[:-1] for inst in m["instances"]}
    assert labels and labels <= coco_names


def test_project_checkpoint_round_trip_keeps_weights_and_description(tmp_path):
    config = placeholder_config("shapes").replace(input_size=(256, 320), score_threshold=0.3)
    network = build_network(config)
    path = save_checkpoint(tmp_path / "m.safetensors", network.state_dict(), config)
    loaded = load_model(str(path))
    assert loaded.config == config and not loaded.placeholder
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], tensor), name
    assert load_checkpoint(path)[0].class_names == ("__background__", "circle", "square", "triangle", "star")


def test_preset_weights_go_through_weights_only_loading(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    evil = tmp_path / "evil.pth"
    torch.save({"backbone.body.conv1.weight": Payload()}, evil)
    try:
        load_model("maskrcnn_resnet50_fpn", weights=str(evil))
    except Exception as exc:
        assert "cannot load weights" in str(exc)
    else:
        raise AssertionError("a pickle with code must not load")


def test_missing_bundled_weights_are_one_clear_error_not_an_untrained_model(tmp_path, monkeypatch, capsys):
    from segstream.commands.main import main
    from segstream.engines import models

    missing = tmp_path / "gone" / "shapes.safetensors"
    monkeypatch.setitem(models.BUNDLED, "shapes", missing)  # as in an install that lost the file
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    code = main(["run", str(clip), "--model", "shapes", "--engine", "torch", "--redis", "none", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"segstream: error: the bundled shapes model's weights are missing ({missing}): "
                   f"reinstall segstream or pass --model a .safetensors checkpoint"]
