"""The per-frame path without torch: an engine that works on numpy arrays gets a numpy batch,
and its numpy detections are pasted, encoded, tracked and published without `import torch`;
the numpy resize and paste give what torch's give."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask
from torchvision.models.detection.roi_heads import paste_masks_in_image

from media import write_clip, write_shapes_clip
from servers import segstream_cli
from segstream.engines.model_config import ModelConfig
from segstream.engines.protocol import Detections
from segstream.pipeline.stages.bilinear import axis_taps, resize_image
from segstream.pipeline.messages import Frame
from segstream.pipeline.stages.postprocess import Postprocess
from segstream.pipeline.stages.preprocess import Preprocess

RUNNER = Path(__file__).with_name("torch_free_run.py")


def _bundled_artifact() -> Path | None:
    try:
        from segstream.engines.openvino_artifact import BUNDLED
    except ImportError:
        return None
    folder = BUNDLED.get("shapes")
    return folder if folder is not None and (folder / "segstream-model.json").is_file() else None


def _run_without_torch(clip: Path, redis_url: str, artifact: Path | None = None) -> dict:
    """One file run in a fresh process (-X importtime); its report, after checking the import log."""
    done = subprocess.run([sys.executable, "-X", "importtime", str(RUNNER), str(clip), redis_url,
                           *([str(artifact)] if artifact else [])], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch_imported"] is False and report["torch_like"] == []
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "segstream.pipeline.stages.postprocess" in imported, "the import log covers the run"
    assert not [name for name in imported if name.split(".")[0] in ("torch", "torchvision")]
    return report


def test_a_file_run_with_a_numpy_engine_publishes_every_frame_and_never_imports_torch(tmp_path, redis_url,
                                                                                      redis_client):
    clip = write_clip(tmp_path / "clip.mp4", "h264-mp4", 320, 180, frames=12)
    report = _run_without_torch(clip, redis_url)

    entries = [json.loads(fields[b"data"]) for _, fields in redis_client.xrange("segstream:clip")]
    frames, eos = entries[:-1], entries[-1]
    assert [m["frame"] for m in frames] == list(range(12)) and eos["eos"] and eos["frames"] == 12
    assert report["published"] == 12 and report["engine_calls"] <= 12
    for m in frames:
        (inst,) = m["instances"]
        assert inst["label"] == "spot" and inst["track_id"] == 1, "one object, tracked from frame to frame"
        mask = coco_mask.decode({"size": inst["mask"]["size"], "counts": inst["mask"]["counts"].encode()})
        assert mask.shape == (180, 320) and mask.any()
        x1, y1, x2, y2 = inst["box"]
        ys, xs = np.nonzero(mask)
        # The network input is the 320x180 frame scaled by 0.7: the box (16..176, 16..112) in frame pixels.
        assert (x1, y1, x2, y2) == pytest.approx((16 / 0.7, 16 / 0.7, 176 / 0.7, 112 / 0.7), abs=0.05)
        assert xs.min() >= int(x1) - 1 and xs.max() <= x2 + 1 and ys.min() >= int(y1) - 1 and ys.max() <= y2 + 1


@pytest.mark.skipif(_bundled_artifact() is None,
                    reason="the bundled shapes artifact is missing from this tree")
def test_the_bundled_model_runs_a_shapes_clip_through_redis_without_importing_torch(tmp_path, redis_url,
                                                                                    redis_client):
    clip = write_shapes_clip(tmp_path / "shapes.mp4", frames=10)
    report = _run_without_torch(clip, redis_url, _bundled_artifact())
    entries = [json.loads(fields[b"data"]) for _, fields in redis_client.xrange("segstream:clip")]
    assert [m["frame"] for m in entries[:-1]] == list(range(10)) and entries[-1]["eos"]
    assert report["published"] == 10 and not [m for m in entries[:-1] if "error" in m]
    assert sum(len(m["instances"]) for m in entries[:-1]) >= 10, "the painted shapes are found"


@pytest.mark.skipif(_bundled_artifact() is None,
                    reason="the bundled shapes artifact is missing from this tree")
def test_segstream_run_on_the_bundled_artifact_never_imports_torch(tmp_path, redis_url, redis_client):
    """`segstream run clip.mp4 --model DIR` as a user types it; a sitecustomize in the process
    writes, at exit, which torch modules it ever loaded."""
    clip = write_shapes_clip(tmp_path / "shapes.mp4", frames=8)
    hook = tmp_path / "hook"
    hook.mkdir()
    loaded = tmp_path / "loaded.json"
    (hook / "sitecustomize.py").write_text(
        "import atexit, json, sys\n"
        f"atexit.register(lambda: open({str(loaded)!r}, 'w').write(json.dumps("
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))))\n")
    path = os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = segstream_cli("run", str(clip), "--model", str(_bundled_artifact()), "--redis", redis_url,
                         "--stream-id", "shapes", "--no-progress", env={"PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(loaded.read_text()) == [], "torch was imported"
    entries = [json.loads(fields[b"data"]) for _, fields in redis_client.xrange("segstream:shapes")]
    assert [m["frame"] for m in entries[:-1]] == list(range(8)) and entries[-1] == {
        "schema": 1, "stream": "shapes", "eos": True, "frames": 8}
    assert sum(len(m["instances"]) for m in entries[:-1]) >= 8


def test_resize_taps_are_torchs_and_a_resized_frame_is_torchs_to_an_ulp():
    rng = np.random.default_rng(2)
    for _ in range(30):
        n_in, n_out = int(rng.integers(2, 1300)), int(rng.integers(1, 1300))
        eye = torch.eye(n_in).reshape(n_in, 1, 1, n_in)
        want = F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False)[:, 0, 0, :].T.numpy()
        i0, i1, w0, w1 = axis_taps(n_in, n_out)
        got = np.zeros((n_out, n_in), np.float32)
        np.add.at(got, (np.arange(n_out), i0), w0)
        np.add.at(got, (np.arange(n_out), i1), w1)
        assert np.array_equal(got, want), (n_in, n_out)
    image = rng.random((720, 1280, 3), dtype=np.float32)
    for height, width in [(360, 640), (384, 683), (1000, 1500), (720, 1280)]:
        want = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=(height, width), mode="bilinear",
                             align_corners=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(resize_image(image, height, width), want, rtol=0, atol=2.5e-7)


def test_numpy_batch_for_a_host_engine_equals_the_torch_batch():
    config = ModelConfig(architecture="compact", class_names=("__background__", "a"), input_size=(128, 224))
    rng = np.random.default_rng(0)
    sizes = [(128, 224), (360, 640), (90, 160), (300, 200)]  # fits, shrinks, grows, pads the width
    frames = [Frame("s", i, None, 0.0, rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for i, (h, w) in enumerate(sizes)]
    batch = Preprocess(config, "cpu", 4, host_arrays=True).batch(frames)
    assert isinstance(batch.images, np.ndarray) and batch.images.dtype == np.float32
    assert batch.images.shape == (4, 3, 128, 224)
    mean, std = torch.tensor(config.mean).view(3, 1, 1), torch.tensor(config.std).view(3, 1, 1)
    for frame, image, (h, w) in zip(frames, batch.images, batch.image_sizes):
        pixels = torch.from_numpy(frame.image).permute(2, 0, 1).float() / 255.0
        if (h, w) != frame.image.shape[:2]:
            pixels = F.interpolate(pixels[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        want = np.zeros((3, 128, 224), np.float32)
        want[:, :h, :w] = ((pixels - mean) / std).numpy()
        np.testing.assert_allclose(image, want, rtol=0, atol=2e-6)
    # A torch engine gets the same numbers as a tensor sharing the batch's memory.
    torch_batch = Preprocess(config, torch.device("cpu"), 4).batch(frames)
    assert isinstance(torch_batch.images, torch.Tensor)
    np.testing.assert_array_equal(torch_batch.images.numpy(), batch.images)


def test_numpy_detections_publish_torchvisions_paste_as_pycocotools_encodes_it():
    g = torch.Generator().manual_seed(5)
    k, height, width = 30, 720, 1280
    xy = torch.rand((k, 2), generator=g) * torch.tensor([600.0, 330.0])
    boxes = torch.cat([xy, xy + 4 + torch.rand((k, 2), generator=g) * 300], 1)
    found = Detections(boxes=boxes, scores=torch.linspace(0.99, 0.5, k), classes=torch.randint(1, 3, (k,), generator=g),
                       masks=torch.rand((k, 28, 28), generator=g))
    as_numpy = Detections(*(t.numpy() for t in (found.boxes, found.scores, found.classes, found.masks)))
    post = Postprocess(("__background__", "a", "b"), 0.5)
    scale = (384 / 720, 683 / 1280)
    got = post.instances(as_numpy, scale, height, width)
    sy, sx = scale
    frame_boxes = found.boxes / torch.tensor([sx, sy, sx, sy])
    frame_boxes[:, 0::2] = frame_boxes[:, 0::2].clamp(0, width)
    frame_boxes[:, 1::2] = frame_boxes[:, 1::2].clamp(0, height)
    pasted = paste_masks_in_image(found.masks[:, None], frame_boxes, (height, width))[:, 0] > 0.5
    want = [coco_mask.encode(np.asfortranarray(m.numpy().astype(np.uint8)))["counts"].decode() for m in pasted]
    assert [i.rle["counts"] for i in got] == want and len(got) == k
    assert [i.box for i in got] == [tuple(b) for b in frame_boxes.tolist()]
    assert [i.class_id for i in got] == found.classes.tolist() and all(isinstance(i.score, float) for i in got)
    # Torch tensors from a torch engine on a CPU take the same host path.
    assert [i.rle for i in post.instances(found, scale, height, width)] == [i.rle for i in got]


def test_the_c_row_pass_pastes_exactly_what_numpy_pastes(monkeypatch):
    """The paste's row pass runs in C where the CPU library has it, else in numpy: same masks."""
    from segstream.pipeline.stages import bilinear

    rng = np.random.default_rng(9)
    cases = []
    for _ in range(200):
        mask = rng.random((30, 30), dtype=np.float32)
        bx0, by0 = int(rng.integers(-50, 600)), int(rng.integers(-50, 300))
        box = (bx0, by0, bx0 + int(rng.integers(0, 400)), by0 + int(rng.integers(0, 300)))
        clip = (max(box[0], 0), max(box[1], 0), min(box[2] + 1, 640), min(box[3] + 1, 360))
        if clip[2] > clip[0] and clip[3] > clip[1]:
            cases.append((mask, box, clip))
    assert bilinear._paste_rows() is not None, "the CPU library has the row pass"
    in_c = [bilinear.paste_mask(*case, 0.5) for case in cases]
    monkeypatch.setattr(bilinear, "_rows", [None])
    in_numpy = [bilinear.paste_mask(*case, 0.5) for case in cases]
    assert len(cases) > 100 and all(np.array_equal(a, b) for a, b in zip(in_c, in_numpy))
