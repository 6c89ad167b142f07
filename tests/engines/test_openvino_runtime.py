"""The deployable OpenVINO artifact and the torch-free engine: the torch engine's instances without
torch, a bundled artifact that matches its checkpoint, and one clear line where torch is needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
torch = pytest.importorskip("torch")
from pycocotools import mask as mask_utils  # noqa: E402

from segstream.engines.artifacts import model_digest  # noqa: E402
from segstream.engines.models import load_model  # noqa: E402
from segstream.engines.openvino_artifact import SIDECAR, ArtifactError, bundled_artifact, load_artifact  # noqa: E402
from segstream.engines.openvino_runtime import OpenVinoRuntimeEngine  # noqa: E402
from segstream.engines.torch_engine import TorchEngine  # noqa: E402
from segstream.pipeline.config import parse_config  # noqa: E402
from segstream.pipeline.run import run  # noqa: E402
from segstream.pipeline.sinks.collect import CollectSink  # noqa: E402

#: A smaller input than the bundled model's for the export test: a quicker conversion, the same network.
SMALL_INPUT = (192, 320)
#: Runs `segstream` as a base install sees it: torch and torchvision do not import.
BASE_INSTALL = (
    "import sys; sys.modules['torch'] = sys.modules['torchvision'] = None\n"
    "from segstream.commands.main import main\n"
    "code = main(sys.argv[1:])\n"
    "assert 'torch' not in [m for m, v in list(sys.modules.items()) if v is not None], 'torch was imported'\n"
    "sys.exit(code)\n"
)


def base_install(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BASE_INSTALL, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A held-out clip of the shapes domain (a seed and photographs never trained on)."""
    from segstream.shapes.clip import render_clip

    folder = tmp_path_factory.mktemp("clip")
    render_clip(folder / "heldout.mp4", folder / "heldout.json", seed=5151, frames=16, size=(480, 270),
                scene_frames=(5, 9))
    return folder / "heldout.mp4"


def _published(video: Path, engine) -> list:
    sink = CollectSink()
    config = parse_config({"redis": {"url": None}, "output": {"progress": False}})
    run([str(video)], config, engine=engine, extra_sinks=[sink])
    return sorted(sink.results, key=lambda r: r.frame.index)


def matched_fraction(got: list, want: list, min_iou: float = 0.99) -> tuple[float, int]:
    """Share of instances (of the larger side, per frame) paired one-to-one with one of the same class
    and mask IoU >= min_iou; and the number of reference instances."""
    matched = total = reference = 0
    for g, w in zip(got, want):
        reference += len(w.instances)
        total += max(len(g.instances), len(w.instances))
        free = list(g.instances)
        for theirs in w.instances:
            best, best_iou = None, -1.0
            for mine in free:
                if mine.class_id == theirs.class_id:
                    iou = mask_utils.iou([mine.rle], [theirs.rle], [0])[0, 0]
                    if iou > best_iou:
                        best, best_iou = mine, iou
            if best is not None and best_iou >= min_iou:
                matched += 1
                free.remove(best)
    return (matched / total if total else 1.0), reference


def test_the_bundled_artifact_publishes_the_torch_engines_instances_without_torch(clip):
    want = _published(clip, TorchEngine(load_model("shapes"), "cpu", 1))
    engine = OpenVinoRuntimeEngine(bundled_artifact("shapes"))
    got = _published(clip, engine)
    assert [r.frame.index for r in got] == [r.frame.index for r in want] == list(range(16))
    fraction, reference = matched_fraction(got, want)
    assert reference >= 16 * 2, "the clip must give the comparison instances to compare"
    assert fraction >= 0.995, f"only {fraction:.2%} of {reference} instances matched with mask IoU >= 0.99"


def test_the_bundled_artifact_is_the_bundled_checkpoint_exported():
    """A retrained or re-thresholded shapes.safetensors without a new export fails here: the artifact
    records the digest of the checkpoint it was made from (re-export:
    `segstream export openvino --model shapes -o segstream/engines/bundled/shapes`)."""
    folder = bundled_artifact("shapes")
    assert folder is not None, "the package ships the shapes model as an OpenVINO artifact"
    artifact = load_artifact(folder, verify=True)  # every part and the anchors match their digests
    model = load_model("shapes")
    assert artifact.sidecar.checkpoint_digest == model_digest(model), "stale bundled artifact: export it again"
    assert artifact.config == model.config
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 16 * 2**20, f"the bundled artifact grew to {size / 2**20:.1f} MiB"


def test_an_exported_artifact_gives_the_torch_detections_and_a_second_export_replaces_it(tmp_path):
    model = load_model("shapes", input_size=SMALL_INPUT)
    out = tmp_path / "shapes-small"
    done = subprocess.run([sys.executable, "-m", "segstream.commands.main", "export", "openvino", "--model", "shapes",
                           "--input-size", "192x320", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"--model {out}" in done.stdout
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["model_config"]["input_size"] == list(SMALL_INPUT)
    assert sidecar["checkpoint_digest"] == model_digest(model)
    assert sidecar["roi"]["box_pool"]["output_size"] == 7 and sidecar["rpn"]["strides"][0] == 4

    from segstream.engines.calibration import network_inputs
    from segstream.shapes.dataset import calibration_frames

    engine = OpenVinoRuntimeEngine(out)
    reference = TorchEngine(model, "cpu", 1)
    images = network_inputs(model.config, calibration_frames(4, seed=31))
    found = 0
    for image in images:
        sizes = [SMALL_INPUT]
        got, want = engine.infer(image.numpy(), sizes)[0], reference.infer(image, sizes)[0]
        assert isinstance(got.boxes, np.ndarray) and got.classes.dtype == np.int64 and got.masks.dtype == np.float32
        assert got.classes.tolist() == want.classes.tolist()
        np.testing.assert_allclose(got.boxes, want.boxes.numpy(), atol=2e-3, rtol=0)
        np.testing.assert_allclose(got.scores, want.scores.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.masks, want.masks.numpy(), atol=1e-3, rtol=0)
        found += len(got)
    assert found >= 4, "the images must give detections to compare"

    # A second export over the artifact replaces it; a directory holding something else is refused.
    again = subprocess.run([sys.executable, "-m", "segstream.commands.main", "export", "openvino", "--model", "shapes",
                            "--input-size", "192x320", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"mine")
    refused = subprocess.run([sys.executable, "-m", "segstream.commands.main", "export", "openvino", "-o", str(other)],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "not a model artifact" in refused.stderr
    assert (other / "keep.jpg").read_bytes() == b"mine"


def test_a_base_install_runs_the_bundled_model_and_an_artifact_dir_without_importing_torch(clip, tmp_path):
    artifact = tmp_path / "artifact"
    shutil.copytree(bundled_artifact("shapes"), artifact)
    for model in ("shapes", str(artifact)):
        done = base_install("run", str(clip), "--model", model, "--redis", "none", "--no-progress", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "openvino-runtime" in done.stderr and "16 frames published" in done.stderr


@pytest.mark.parametrize("args, names", [
    (("--model", "maskrcnn_resnet50_fpn"), ("pip install 'segstream[torch]'", "segstream export openvino")),
    (("--model", "CHECKPOINT"), ("pip install 'segstream[torch]'", "segstream export openvino")),
    (("--engine", "torch"), ("--engine torch", "pip install 'segstream[torch]'")),
    (("--engine", "onnxruntime"), ("--engine onnxruntime", "pip install 'segstream[torch]'")),
])
def test_what_needs_torch_is_one_clear_line_on_a_base_install(clip, tmp_path, args, names):
    from segstream.engines.models import BUNDLED

    args = tuple(str(BUNDLED["shapes"]) if a == "CHECKPOINT" else a for a in args)
    done = base_install("run", str(clip), *args, "--redis", "none", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segstream: error:") and "Traceback" not in done.stderr
    for name in names:
        assert name in lines[0]


def test_export_on_a_base_install_names_the_torch_extra(tmp_path):
    done = base_install("export", "openvino", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and "pip install 'segstream[torch]'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_an_int8_export_takes_calibration_frames_of_the_models_domain_and_a_coco_model_without_them_is_refused(
        tmp_path, capsys):
    from segstream.commands.export import main as export_main

    out = tmp_path / "coco-int8"
    assert export_main(["openvino", "--model", "maskrcnn_resnet50_fpn", "--precision", "int8", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "segstream export: --precision int8 for maskrcnn_resnet50_fpn needs --calibration DIR|VIDEO: frames of what "
        "the model will see (a folder of images or a video), to quantize on")
    assert export_main(["openvino", "--model", "shapes", "--precision", "int8", "--calibration", str(tmp_path / "none"),
                        "-o", str(out)]) == 2
    assert "--calibration " + str(tmp_path / "none") + ": no such folder or video file" in capsys.readouterr().err
    assert not out.exists()


def test_the_export_reads_calibration_frames_from_a_video_as_the_pipeline_would_feed_them(clip):
    import argparse

    from segstream.commands.export import _calibration

    model = load_model("shapes", input_size=SMALL_INPUT)
    args = argparse.Namespace(calibration=str(clip), calibration_frames=3, model="my-model")
    inputs, note = _calibration(args, model)
    assert note == f"3 frames of {Path(clip).name}"
    assert [tuple(i.shape) for i in inputs] == [(1, 3, *SMALL_INPUT)] * 3
    # What the pipeline's preprocess makes of the same frame: one resize rule, one normalisation.
    from segstream.engines.calibration import read_frames
    from segstream.pipeline.messages import Frame
    from segstream.pipeline.stages.preprocess import Preprocess

    first = read_frames(clip, 3)[0]
    batch = Preprocess(model.config, "cpu", 1).batch([Frame("c", 0, None, 0.0, first)])
    fed = torch.as_tensor(np.asarray(batch.images))[0]
    torch.testing.assert_close(inputs[0][0], fed, atol=1e-4, rtol=0)


def test_a_damaged_artifact_is_refused_with_the_cause(clip, tmp_path):
    artifact = tmp_path / "artifact"
    shutil.copytree(bundled_artifact("shapes"), artifact)
    sidecar = json.loads((artifact / SIDECAR).read_text())
    sidecar["rpn"]["post_nms_top_n"] = "many"
    (artifact / SIDECAR).write_text(json.dumps(sidecar))
    done = base_install("run", str(clip), "--model", str(artifact), "--redis", "none", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2 and "rpn.post_nms_top_n" in done.stderr and "Traceback" not in done.stderr

    shutil.copytree(bundled_artifact("shapes"), artifact, dirs_exist_ok=True)
    (artifact / "mask_head.bin").unlink()
    done = base_install("run", str(clip), "--model", str(artifact), "--redis", "none", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2 and "mask_head.bin is missing" in done.stderr
    with pytest.raises(ArtifactError, match="trunk does not match"):
        shutil.copytree(bundled_artifact("shapes"), artifact, dirs_exist_ok=True)
        with open(artifact / "trunk.bin", "r+b") as f:
            f.seek(1000)
            f.write(b"\x7f\x7f\x7f\x7f")
        load_artifact(artifact, verify=True)


def test_an_int8_artifact_made_at_export_runs_on_a_base_install_at_its_own_precision(clip, tmp_path):
    out = tmp_path / "shapes-int8"
    done = subprocess.run([sys.executable, "-m", "segstream.commands.main", "export", "openvino", "--model", "shapes",
                           "--input-size", "192x320", "--precision", "int8", "--calibration-frames", "8", "-o", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["weights"] == "int8" and "8 shapes-domain images" in sidecar["calibration"]
    assert sum(p.stat().st_size for p in out.glob("*.bin")) < sum(
        p.stat().st_size for p in bundled_artifact("shapes").glob("*.bin")), "int8 weights are smaller"

    ran = base_install("run", str(clip), "--model", str(out), "--redis", "none", "--no-progress", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "openvino-runtime int8" in ran.stderr and "16 frames published" in ran.stderr
    refused = base_install("run", str(clip), "--model", str(out), "--precision", "bf16", "--redis", "none",
                           "--no-progress", cwd=tmp_path)
    assert refused.returncode == 2 and "holds int8 weights" in refused.stderr


def test_a_bigger_batch_than_exported_runs_in_chunks_with_each_frames_own_detections():
    from segstream.engines.calibration import network_inputs
    from segstream.shapes.dataset import calibration_frames

    single = OpenVinoRuntimeEngine(bundled_artifact("shapes"))
    triple = OpenVinoRuntimeEngine(bundled_artifact("shapes"), max_batch=3)
    height, width = single.config.input_size
    images = np.concatenate([i.numpy() for i in network_inputs(load_model("shapes").config, calibration_frames(3, seed=12))])
    sizes = [(height, width), (height - 32, width), (height, width)]
    images[1, :, height - 32:] = 0
    alone = [single.infer(images[i : i + 1], sizes[i : i + 1])[0] for i in range(3)]
    for together in (triple.infer(images, sizes), triple.infer(images[:2], sizes[:2])):
        for a, b in zip(alone, together):
            assert len(a) == len(b) and a.classes.tolist() == b.classes.tolist()
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.masks, b.masks)
    assert sum(len(a) for a in alone) >= 3
