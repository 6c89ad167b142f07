"""A `segstream run` of one file through Redis with an engine that works on numpy arrays, in a
process of its own; prints one JSON line: what was published and whether torch was imported.

    python -X importtime tests/pipeline/torch_free_run.py CLIP REDIS_URL [ARTIFACT_DIR]

With ARTIFACT_DIR (from `segstream export openvino`) the engine is the torch-free OpenVINO
engine (engines/openvino_runtime.py). Without, a numpy stand-in with the same protocol
(`host_arrays`, numpy in, numpy Detections out): it finds one object per frame, the pixels
brighter than the frame's mean inside a fixed box, as a 28x28 mask. Everything around the
engine is the real pipeline: decode, preprocess, postprocess (paste + RLE), tracking, the Redis sink.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from segstream.engines.model_config import ModelConfig
from segstream.engines.protocol import Detections
from segstream.pipeline.config import parse_config
from segstream.pipeline.run import run

INPUT = (128, 224)


class BrightSpotEngine:
    """One detection per image: the box (16, 16)-(176, 112) of the network input, its 28x28 mask
    the pixels above the batch's mean brightness there (so the mask follows the video)."""

    name = "numpy stand-in"
    device = "cpu"
    max_batch = 2
    host_arrays = True

    def __init__(self) -> None:
        self.config = ModelConfig(architecture="compact", class_names=("__background__", "spot"), input_size=INPUT)
        self.calls = 0

    def infer(self, images: np.ndarray, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        assert isinstance(images, np.ndarray) and images.dtype == np.float32 and images.shape[1:] == (3, *INPUT)
        self.calls += 1
        out = []
        for image in images:
            crop = image.mean(axis=0)[16:112, 16:176]  # [96, 160]
            rows = np.linspace(0, crop.shape[0] - 1, 28).astype(int)
            cols = np.linspace(0, crop.shape[1] - 1, 28).astype(int)
            mask = (crop[rows][:, cols] > crop.mean()).astype(np.float32)
            out.append(Detections(boxes=np.array([[16, 16, 176, 112]], dtype=np.float32),
                                  scores=np.array([0.9], dtype=np.float32),
                                  classes=np.array([1], dtype=np.int64), masks=mask[None]))
        return out

    def close(self) -> None:
        pass


def main(clip: str, redis_url: str, artifact: str | None = None) -> None:
    if artifact:
        from segstream.engines.openvino_runtime import OpenVinoRuntimeEngine

        engine = OpenVinoRuntimeEngine(artifact)
        engine.calls = 0
    else:
        engine = BrightSpotEngine()
    config = parse_config({"engine": {"batch_size": engine.max_batch}, "redis": {"url": redis_url},
                           "output": {"progress": False}})
    summary = run([clip], config, stream_ids=["clip"], engine=engine)
    print(json.dumps({"published": summary.frames, "instances": summary.instances, "engine_calls": engine.calls,
                      "torch_imported": "torch" in sys.modules,
                      "torch_like": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
