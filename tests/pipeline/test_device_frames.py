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
