"""--engine openvino: the torch engine's instances, faster; a build cached on disk; a clear line without OpenVINO."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from pycocotools import mask as mask_utils

from segstream.engines.calibration import CalibrationError, network_inputs, read_frames
from segstream.engines.factory import EngineError, open_engine
from segstream.engines.models import load_model, placeholder_config
from segstream.engines.torch_engine import TorchEngine
from segstream.pipeline.config import parse_config
from segstream.pipeline.run import run
from segstream.pipeline.sinks.collect import CollectSink
from segstream.shapes.dataset import calibration_frames

pytest.importorskip("openvino")
from segstream.engines.openvino_engine import OpenVinoEngine  # noqa: E402

#: The bundled model at a smaller input than its own: a quicker conversion, the same network.
INPUT_SIZE = (192, 320)
INPUT_SPEC = placeholder_config("shapes").replace(input_size=INPUT_SIZE)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private SEGSTREAM_CACHE for this module: builds here start from nothing."""
    folder = tmp_path_factory.mktemp("segstream-cache")
    before = os.environ.get("SEGSTREAM_CACHE")
    os.environ["SEGSTREAM_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("SEGSTREAM_CACHE", None)
    else:
        os.environ["SEGSTREAM_CACHE"] = before


@pytest.fixture(scope="module")
def model():
    return load_model("shapes", input_size=INPUT_SIZE)


@pytest.fixture(scope="module")
def fp32_engine(model, cache):
    return OpenVinoEngine(model, "cpu", 1, "fp32")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A held-out clip of the shapes domain (seed and photographs never trained on) and its ground truth."""
    from segstream.shapes.clip import render_clip

    folder = tmp_path_factory.mktemp("clip")
    render_clip(folder / "heldout.mp4", folder / "heldout.json", seed=4242, frames=24, size=(480, 270),
                scene_frames=(6, 10))
    return folder / "heldout.mp4", folder / "heldout.json"


def _published(video, engine):
    sink = CollectSink()
    config = parse_config({"redis": {"url": None}, "output": {"progress": False}})
    run([str(video)], config, engine=engine, extra_sinks=[sink])
    return sorted(sink.results, key=lambda r: r.frame.index)


def _box_iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def test_openvino_fp32_publishes_the_torch_instances_on_a_held_out_clip(model, fp32_engine, clip):
    want = _published(clip[0], TorchEngine(model, "cpu", 1))
    got = _published(clip[0], fp32_engine)
    assert [r.frame.index for r in got] == [r.frame.index for r in want] == list(range(24))
    matched = 0
    for g, w in zip(got, want):
        assert len(g.instances) == len(w.instances), f"frame {g.frame.index}"
        for mine, theirs in zip(g.instances, w.instances):
            assert mine.class_id == theirs.class_id
            assert _box_iou(mine.box, theirs.box) >= 0.99
            mask_iou = mask_utils.iou([mine.rle], [theirs.rle], [0])[0, 0]
            assert mask_iou >= 0.98, f"frame {g.frame.index}: mask IoU {mask_iou}"
            matched += 1
    assert matched >= 24 * 2, "the clip must give the comparison instances to compare"


def test_the_build_is_reused_from_the_cache_and_redone_when_the_weights_change(model, cache, fp32_engine):
    again = OpenVinoEngine(model, "cpu", 1, "fp32")
    assert again.cache_dir == fp32_engine.cache_dir and not again.built
    assert str(again.cache_dir).startswith(str(cache))
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in changed.network.roi_heads.box_predictor.parameters():
            parameter.mul_(1.5)
    # (A batch of two: the fixed-batch build also takes a single frame, zero-padded.)
    other = OpenVinoEngine(changed, "cpu", 2, "fp32")
    assert other.built and other.cache_dir != fp32_engine.cache_dir
    # The new build runs the changed weights: it gives what torch gives with them, not the old detections.
    from segstream.engines.calibration import network_inputs
    from segstream.shapes.dataset import calibration_frames

    images = torch.cat(network_inputs(model.config, calibration_frames(2, seed=9)))
    sizes = [INPUT_SIZE, (INPUT_SIZE[0] - 32, INPUT_SIZE[1])]
    images[1, :, sizes[1][0]:] = 0
    want = TorchEngine(changed, "cpu", 2).infer(images, sizes)
    got = other.infer(images, sizes)
    old = fp32_engine.infer(images[:1], sizes[:1])[0]
    assert len(want[0]) > 0 and not (len(old) == len(want[0]) and torch.allclose(old.scores, want[0].scores))
    for g, w in zip([*got, *other.infer(images[:1], sizes[:1])], [*want, want[0]]):
        assert torch.equal(g.classes, w.classes)
        torch.testing.assert_close(g.boxes, w.boxes, atol=2e-3, rtol=0)
        torch.testing.assert_close(g.scores, w.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(g.masks, w.masks, atol=1e-3, rtol=0)


class _Messages(CollectSink):
    """Keeps the wire messages (what a subscriber reads), for scoring against the ground truth."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict] = []

    def write(self, result, message) -> None:
        self.messages.append(message)


def _mask_ap(engine, clip) -> float:
    from segstream.shapes.evaluate import coco_metrics

    sink = _Messages()
    config = parse_config({"redis": {"url": None}, "output": {"progress": False}})
    run([str(clip[0])], config, engine=engine, extra_sinks=[sink])
    return coco_metrics(clip[1], sink.messages)["mask_ap"]


@pytest.fixture(scope="module")
def fp32_mask_ap(fp32_engine, clip) -> float:
    return _mask_ap(fp32_engine, clip)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_bf16_and_int8_keep_the_mask_ap_of_fp32_on_a_held_out_clip(model, cache, clip, fp32_mask_ap, precision):
    # int8 quantizes on frames of the model's domain, handed in: here the shapes model's training domain.
    calibration = network_inputs(model.config, calibration_frames(48)) if precision == "int8" else None
    try:
        engine = OpenVinoEngine(model, "cpu", 1, precision, calibration=calibration)
    except EngineError as exc:  # bf16 needs the CPU's bfloat16 arithmetic; the refusal is then the offer
        assert precision == "bf16" and "no bfloat16" in str(exc)
        return
    assert fp32_mask_ap > 0.5, "the model must find the clip's shapes for the comparison to mean anything"
    mask_ap = _mask_ap(engine, clip)
    assert abs(mask_ap - fp32_mask_ap) <= 0.01, f"{precision} mask AP {mask_ap:.4f}, fp32 {fp32_mask_ap:.4f}"


def test_auto_picks_openvino_on_the_cpu_and_names_it(model, cache):
    engine = open_engine("auto", model, "cpu", 1)
    assert isinstance(engine, OpenVinoEngine) and engine.name == "openvino fp32 (auto)"


def test_int8_without_calibration_frames_is_one_line_saying_what_to_pass(model, cache):
    with pytest.raises(EngineError, match=r"--precision int8 quantizes on calibration frames of the model's own domain"):
        OpenVinoEngine(model, "cpu", 1, "int8")
    with pytest.raises(EngineError, match="needs the openvino engine, which is unavailable: --precision int8 quantizes"):
        open_engine("auto", model, "cpu", 1, precision="int8")


def test_calibration_frames_come_from_a_folder_of_images_or_a_video(tmp_path, clip):
    from PIL import Image

    for index, frame in enumerate(calibration_frames(5, seed=3)):
        Image.fromarray(frame).save(tmp_path / f"{index:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image: skipped")
    from_folder = read_frames(tmp_path, count=3)
    assert len(from_folder) == 3 and all(f.shape == (360, 640, 3) and f.dtype == "uint8" for f in from_folder)
    from_video = read_frames(clip[0], count=4)
    assert len(from_video) == 4 and from_video[0].shape == (270, 480, 3)
    inputs = network_inputs(INPUT_SPEC, from_video)
    assert [tuple(i.shape) for i in inputs] == [(1, 3, *INPUT_SIZE)] * 4
    # 480x270 fits 320 wide: 180 rows of picture, the rest zero padding (normalised zero is not zero).
    assert torch.count_nonzero(inputs[0][0, :, 180:]) == 0 and torch.count_nonzero(inputs[0][0, :, 179]) > 0
    with pytest.raises(CalibrationError, match="no such folder or video file"):
        read_frames(tmp_path / "missing")
    with pytest.raises(CalibrationError, match="not a folder of images or a readable video"):
        read_frames(tmp_path / "notes.txt")


def test_precisions_other_engines_lack_are_refused_in_one_line(model):
    with pytest.raises(EngineError, match="--engine torch offers fp32"):
        open_engine("torch", model, "cpu", 1, precision="int8")
    with pytest.raises(EngineError, match="--device cpu"):
        OpenVinoEngine(model, "cuda", 1)


def _cli_without_openvino(*args: str) -> subprocess.CompletedProcess:
    """`segstream ARGS` in a Python where `import openvino` fails, as on a machine without it."""
    code = ("import sys; sys.modules['openvino'] = None; from segstream.commands.main import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_engine_openvino_without_openvino_says_what_to_install(clip):
    result = _cli_without_openvino("run", str(clip[0]), "--engine", "openvino", "--redis", "none", "--no-progress")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["segstream: error: --engine openvino: OpenVINO is not installed: "
                     "pip install openvino (a dependency of segstream: pip install -e . installs it)"]


def test_auto_without_openvino_runs_torch_and_says_why(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as on a machine without OpenVINO
    engine = open_engine("auto", model, "cpu", 1)
    assert isinstance(engine, TorchEngine)
    assert engine.name.startswith("torch (auto: openvino unavailable: OpenVINO is not installed: pip install openvino")


def test_the_cache_keeps_the_most_recently_used_builds_only(tmp_path):
    from segstream.engines.openvino_build import prune_builds

    for age, name in enumerate(["newest", "middle", "oldest"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1e9 - age * 100, 1e9 - age * 100))
    (tmp_path / ".oldest-in-progress.part").mkdir()
    os.utime(tmp_path / ".oldest-in-progress.part", (1.0, 1.0))
    prune_builds(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".oldest-in-progress.part", "middle", "newest"]


def test_batches_leave_torchs_thread_count_alone_for_the_other_stages(fp32_engine):
    """Postprocess and the other stages run torch on their own threads while the engine runs batches:
    the engine must not change the process-wide intra-op thread count under them, batch after batch
    (a thread's first torch call takes the process-wide count of that moment and keeps it)."""
    import threading

    images = torch.zeros((1, 3, *INPUT_SIZE))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what the rest of the process runs with (set after the engine was built)
    try:
        done = threading.Event()

        def batches() -> None:
            for _ in range(20):
                fp32_engine.infer(images, [INPUT_SIZE])
            done.set()

        seen: list[int] = []

        def stage_starts() -> None:  # a thread that starts using torch now, as a stage's thread would
            seen.append(torch.get_num_threads())

        runner = threading.Thread(target=batches, name="inference")
        runner.start()
        while not done.is_set():
            sampler = threading.Thread(target=stage_starts)
            sampler.start()
            sampler.join()
        runner.join()
        assert len(seen) > 20 and set(seen) == {2}, f"thread counts seen during batches: {sorted(set(seen))}"
    finally:
        torch.set_num_threads(before)
