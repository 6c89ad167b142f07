"""Frames reach the engine's device: NVDEC where a decoder is present, else a clean CPU fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segstream.engines.model_config import ModelConfig
from segstream.engines.models import SHAPES_CLASSES
from segstream.pipeline.sources.device_frames import PinnedUpload, decode_backend
from segstream.pipeline.messages import Frame
from segstream.pipeline.stages.preprocess import Preprocess

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_without_a_gpu_decoding_falls_back_to_the_cpu_and_says_why():
    backend = decode_backend("cpu")
    assert backend.name == "cpu" and "cpu" in backend.reason
    assert decode_backend("cuda", prefer="cpu").name == "cpu"
    if not torch.cuda.is_available():
        backend = decode_backend("cuda")
        assert backend.name == "cpu" and backend.reason == "no CUDA device: frames are decoded on the CPU"


def test_cpu_upload_hands_the_frame_over_without_a_copy():
    image = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    tensor = PinnedUpload("cpu")(image)
    assert tensor.data_ptr() == image.ctypes.data and torch.equal(tensor, torch.from_numpy(image))


def _frames(sizes):
    rng = np.random.default_rng(0)
    return [Frame("s", i, None, 0.0, rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for i, (h, w) in enumerate(sizes)]


@needs_cuda
def test_gpu_preprocess_equals_cpu_preprocess_and_reuses_its_pinned_buffers():
    config = ModelConfig(architecture="compact", class_names=SHAPES_CLASSES, input_size=(128, 224))
    frames = _frames([(128, 224), (90, 160), (128, 224)] * 3)
    cpu = Preprocess(config, torch.device("cpu"), 3)
    gpu = Preprocess(config, torch.device("cuda"), 3)
    for start in range(0, len(frames), 3):
        want = cpu.batch(frames[start:start + 3])
        got = gpu.batch(frames[start:start + 3])
        assert got.ready is not None
        torch.cuda.current_stream().wait_event(got.ready)
        torch.testing.assert_close(got.images.cpu(), want.images, atol=1e-4, rtol=0)
    assert gpu.upload.allocations <= 4  # one pinned buffer per slot, not one per frame


def _shape_frames(count: int) -> list[Frame]:
    """Frames of the bundled model's domain (painted shapes on held-out backgrounds), sizes varying."""
    from segstream.shapes.backgrounds import HELDOUT_PHOTOS, random_background
    from segstream.shapes.dataset import random_scene
    from segstream.shapes.scene import paint

    rng = np.random.default_rng(31)
    frames = []
    for index in range(count):
        height, width = [(270, 480), (180, 320), (128, 224)][index % 3]
        image, _ = paint(random_background(rng, width, height, HELDOUT_PHOTOS), random_scene(rng, width, height), rng)
        frames.append(Frame("s", index, None, 0.0, image))
    return frames


def _stages(engine, batch: int) -> list:
    """Preprocess, inference and postprocess as the pipeline chains them."""
    from segstream.pipeline.stages.inference import Inference
    from segstream.pipeline.stages.postprocess import Postprocess

    config = engine.config
    return [Preprocess(config, engine.device, batch), Inference(engine),
            Postprocess(config.class_names, config.mask_threshold, take=batch, regions=False)]


def _chain(engine, frames: list[Frame], batch: int, stages: list | None = None):
    """(chain, results): `stages` (new ones by default) between a replay of `frames` and a
    collector; not started."""
    from segstream.pipeline.messages import FrameResult
    from segstream.pipeline.queues import EdgePolicy
    from segstream.pipeline.runtime import Chain

    results: list = []

    class Collect:
        name, take = "collect", 16

        def process(self, items):
            results.extend(i for i in items if isinstance(i, FrameResult))
            return []

        def flush(self):
            return []

    class Replay:
        name = "replay"

        def items(self, stopping):
            yield from frames

    chain = Chain(producers=[], queue_sizes=[8, 2, 8, 16], batchable=lambda item: isinstance(item, Frame),
                  stages=[*(stages or _stages(engine, batch)), Collect()])
    chain.add_producer(Replay(), EdgePolicy(8, "block"))
    return chain, results


def _chain_results(device: str, frames: list[Frame], batch: int) -> list:
    """Frames through preprocess -> static engine -> postprocess, sorted by frame index."""
    from segstream.engines.factory import open_engine
    from segstream.engines.models import load_model

    engine = open_engine("static", load_model("shapes"), device, batch)
    chain, results = _chain(engine, frames, batch)
    chain.start()
    chain.wait()
    engine.close()
    return sorted(results, key=lambda r: r.frame.index)


@needs_cuda
def test_cuda_chain_publishes_what_the_cpu_chain_publishes():
    """Preprocess stream -> event -> CUDA-graph engine -> device RLE: ordering mistakes would show here."""
    from pycocotools import mask as mask_utils

    frames = _shape_frames(12)
    want = _chain_results("cpu", frames, 4)
    assert sum(len(r.instances) for r in want) >= 12, "the bundled model finds shapes in its own domain"
    got = _chain_results("cuda", frames, 4)
    assert [r.frame.index for r in got] == [r.frame.index for r in want] == list(range(12))
    for mine, theirs in zip(got, want):
        assert mine.error is None and len(mine.instances) == len(theirs.instances), f"frame {mine.frame.index}"
        for a, b in zip(mine.instances, theirs.instances):
            assert a.class_id == b.class_id
            if mask_utils.area(b.rle) or mask_utils.area(a.rle):
                assert mask_utils.iou([a.rle], [b.rle], [0])[0, 0] >= 0.98


@needs_cuda
def test_no_gpu_stage_waits_for_the_default_stream():
    """Each stage queues its work on its own stream, ordered by events: a long kernel sitting on
    torch's default stream holds none of them up (any stage using that stream, or synchronising
    the device, would finish only after it)."""
    from segstream.engines.factory import open_engine
    from segstream.engines.models import load_model

    frames = _shape_frames(8)
    engine = open_engine("static", load_model("shapes"), "cuda", 4)  # every CUDA graph captured here
    # The same stages twice: the first run compiles and loads the kernels and fills the caching
    # allocators for the stages' own streams, so the second allocates nothing new (a cudaMalloc or
    # a pinned allocation may synchronise the device, which is not what this test is about).
    stages = _stages(engine, 4)
    chain, first = _chain(engine, frames, 4, stages)
    chain.start()
    chain.wait()
    chain, results = _chain(engine, frames, 4, stages)
    torch.cuda.synchronize()
    clock_hz = 2.0e9  # an H200's SMs run at up to 1.98 GHz: the sleep lasts >= 4 s
    torch.cuda._sleep(int(4 * clock_hz))  # queued on the default stream
    chain.start()
    chain.wait()
    still_sleeping = not torch.cuda.default_stream().query()
    torch.cuda.synchronize()
    engine.close()
    assert still_sleeping, "a stage waited for the default stream (or synchronised the device)"
    assert sorted(r.frame.index for r in results) == list(range(8))
    by_index = {r.frame.index: r for r in first}
    for r in results:
        assert [i.rle for i in r.instances] == [i.rle for i in by_index[r.frame.index].instances]


# ---------------------------------------------------------------- NVDEC

needs_nvdec = pytest.mark.skipif(decode_backend("cuda").name != "nvdec", reason=decode_backend("cuda").reason)
PREPARED_CLIP = Path(__file__).resolve().parents[2] / ".gpu" / "clips" / "shapes.mp4"


def test_a_file_is_decoded_on_the_cpu_where_nvdec_is_unusable_and_insisting_is_one_clear_error(tmp_path):
    pytest.importorskip("av")
    from media import write_clip

    from segstream.pipeline.config import RunConfig
    from segstream.pipeline.sources.nvdec import NvdecFileSource
    from segstream.pipeline.sources.file import VideoFileSource
    from segstream.pipeline.stream_spec import StreamSpec, make_source
    from segstream.pipeline.streams import SourceError

    clip = write_clip(tmp_path / "clip.mp4", frames=3)
    spec = StreamSpec(id="cam", url=str(clip))
    config = lambda decoder: RunConfig.model_validate({"engine": {"device": "cuda"}, "source": {"decoder": decoder}})  # noqa: E731
    assert isinstance(make_source(spec, config("cpu")), VideoFileSource)
    backend = decode_backend("cuda")
    if backend.name == "nvdec":
        on_gpu = make_source(spec, config("auto"))
        assert isinstance(on_gpu, NvdecFileSource) and on_gpu.state.snapshot()["decoder"] == "nvdec"
        return
    on_cpu = make_source(spec, config("auto"))
    assert isinstance(on_cpu, VideoFileSource) and on_cpu.state.snapshot()["decoder"] == "cpu"
    with pytest.raises(SourceError) as refused:
        make_source(spec, config("nvdec"))
    assert str(refused.value) == f"source.decoder is nvdec, but {backend.reason.split(':')[0]}"
    cpu_engine = RunConfig.model_validate({"source": {"decoder": "nvdec"}})  # NVDEC is for CUDA engines only
    assert isinstance(make_source(spec, cpu_engine), VideoFileSource)


def test_an_nvdec_source_refuses_a_missing_file_or_a_missing_decoder_in_one_line(tmp_path):
    from segstream.pipeline.sources.nvdec import NvdecFileSource
    from segstream.pipeline.streams import SourceError

    with pytest.raises(SourceError, match=r"^video file not found: .*nope\.mp4$"):
        NvdecFileSource(str(tmp_path / "nope.mp4"), "s", "cuda").check()
    if decode_backend("cuda").name != "nvdec":
        clip = tmp_path / "clip.mp4"
        clip.write_bytes(b"\x00" * 64)
        with pytest.raises(SourceError, match=r"^cannot decode .*clip\.mp4 with NVDEC: PyNvVideoCodec does not load \("):
            NvdecFileSource(str(clip), "s", "cuda").check()


def test_frames_give_their_pixels_on_the_host_by_rows_and_columns():
    image = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    frame = Frame("s", 0, None, 0.0, image)
    assert frame.host_image() is image
    assert np.array_equal(frame.sample(np.array([0, 4]), np.array([1, 3])), image[[0, 4]][:, [1, 3]])
    if torch.cuda.is_available():
        on_gpu = Frame("s", 0, None, 0.0, torch.from_numpy(image).cuda())
        assert np.array_equal(on_gpu.host_image(), image)
        assert np.array_equal(on_gpu.sample(np.array([0, 4]), np.array([1, 3])), image[[0, 4]][:, [1, 3]])


def _shapes_clip(tmp_path) -> Path:
    """A real H.264 clip of the model's domain: encoded here when PyAV is installed, else the one
    `benchmarks/gpu_check.sh prepare` made (the GPU machine has no PyAV)."""
    try:
        from media import write_shapes_clip
    except ImportError:
        if not PREPARED_CLIP.exists():
            pytest.skip(f"no PyAV to encode a clip and no prepared {PREPARED_CLIP}")
        return PREPARED_CLIP
    return write_shapes_clip(tmp_path / "shapes.mp4")


@needs_nvdec
def test_nvdec_frames_stay_on_the_gpu_match_the_cpu_decoder_and_segment_alike(tmp_path):
    import threading

    import cv2

    from segstream.engines.factory import open_engine
    from segstream.engines.models import load_model
    from segstream.pipeline.messages import EndOfStream
    from segstream.pipeline.sources.nvdec import NvdecFileSource
    from pycocotools import mask as mask_utils

    clip = _shapes_clip(tmp_path)
    source = NvdecFileSource(str(clip), "s", "cuda")
    source.check()
    items = list(source.items(threading.Event()))
    frames = [item for item in items if isinstance(item, Frame)]
    assert isinstance(items[-1], EndOfStream) and items[-1].frames == len(frames) == source.expected_frames == 16
    assert [f.index for f in frames] == list(range(16))
    capture, reference = cv2.VideoCapture(str(clip)), []
    while (got := capture.read())[0]:
        reference.append(Frame("s", len(reference), None, 0.0, cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB)))
    assert len(reference) == 16
    for mine, theirs in zip(frames, reference):
        assert mine.image.is_cuda and mine.ready is not None and mine.image.shape == theirs.image.shape
        diff = np.abs(mine.host_image().astype(np.int16) - theirs.image).mean()
        assert diff < 4.0, f"frame {mine.index}: mean |NVDEC - FFmpeg| = {diff:.2f} (colour conversion differs a little)"
    engine = open_engine("static", load_model("shapes"), "cuda", 4)
    results = {}
    for name, given in (("nvdec", frames), ("cpu", reference)):
        chain, out = _chain(engine, given, 4)
        chain.start()
        chain.wait()
        results[name] = {r.frame.index: r for r in out}
    engine.close()
    same = 0
    for index in range(16):
        a, b = results["nvdec"][index].instances, results["cpu"][index].instances
        if len(a) == len(b) and all(mask_utils.iou([x.rle], [y.rle], [0])[0, 0] >= 0.9 for x, y in zip(a, b)):
            same += 1
    assert same >= 14, f"{same} of 16 frames segment alike from NVDEC and CPU-decoded pixels"
