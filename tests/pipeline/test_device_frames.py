"""Frames reach the engine's device: NVDEC where a decoder is present, else a clean CPU fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segstream.engines.model_config import ModelConfig
from segstream.engines.models import SHAPES_CLASSES
from segstream.pipeline.device_frames import PinnedUpload, decode_backend
from segstream.pipeline.messages import Frame
from segstream.pipeline.preprocess import Preprocess

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


def _chain(engine, frames: list[Frame], batch: int):
    """(chain, results): preprocess -> engine -> postprocess as the pipeline chains them, not started."""
    from segstream.pipeline.inference import Inference
    from segstream.pipeline.messages import FrameResult
    from segstream.pipeline.postprocess import Postprocess
    from segstream.pipeline.runtime import Chain, EdgePolicy

    config = engine.config
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
                  stages=[Preprocess(config, engine.device, batch), Inference(engine),
                          Postprocess(config.class_names, config.mask_threshold, take=batch, regions=False), Collect()])
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
    chain, first = _chain(engine, frames, 4)  # compiles and loads the kernels, fills the caches
    chain.start()
    chain.wait()
    chain, results = _chain(engine, frames, 4)
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
