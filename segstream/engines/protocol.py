"""The one protocol every inference backend (torch, static, onnxruntime, openvino, tensorrt) implements,
the optional split of an engine into two halves, and the engines' error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

import numpy as np

from segstream.engines.model_config import ModelConfig

if TYPE_CHECKING:  # the torch engines' types; an engine that runs on numpy arrays never imports torch
    import torch

#: A host numpy array or a torch tensor (on the engine's device).
Array = Union[np.ndarray, "torch.Tensor"]


class EngineError(RuntimeError):
    """An engine cannot be created or used; the message is one line for the user."""


@dataclass
class Detections:
    """What an engine found in one image, in network-input pixel coordinates.

    boxes:   float32 [K, 4]  x1, y1, x2, y2 in the padded network input (ModelConfig.input_size).
    scores:  float32 [K]     descending.
    classes: int64   [K]     class ids 1..C (0 is background and never appears).
    masks:   float32 [K, M, M] mask probabilities in [0, 1] over each box (M = 28 for Mask R-CNN).
    The fields are numpy arrays of these shapes and dtypes (an engine with `host_arrays`, see
    Engine; the torch-free engine, openvino_runtime) or torch tensors on the engine's device; K may be 0.
    """

    boxes: Array
    scores: Array
    classes: Array
    masks: Array

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: "torch.device | str") -> "Detections":
        """The same detections as torch tensors on `device` (numpy fields are converted; imports torch)."""
        import torch

        return Detections(*(torch.as_tensor(t).to(device) for t in (self.boxes, self.scores, self.classes, self.masks)))


def takes_host_arrays(engine: Any) -> bool:
    """True when `engine` takes numpy images and returns numpy Detections: the pipeline then runs
    without torch, on the host. Said by the engine's `host_arrays`, else by its device being a
    plain string rather than a torch.device (the torch-free engine's "cpu")."""
    declared = getattr(engine, "host_arrays", None)
    if declared is not None:
        return bool(declared)
    return isinstance(getattr(engine, "device", None), str)


@runtime_checkable
class Engine(Protocol):
    """A Mask R-CNN behind a fixed-size input.

    name: the engine kind as the user names it (`--engine NAME`).
    config: the model's description (class names, input size, normalisation, thresholds).
    device: where `infer` expects its input and leaves its output (a torch.device, or "cpu").
    max_batch: the largest batch `infer` accepts.
    host_arrays (optional): `infer` takes a numpy float32 batch and returns Detections of numpy
        arrays; engines that run without torch set it, or have a str device (`takes_host_arrays`).
    """

    name: str
    config: ModelConfig
    device: "torch.device | str"
    max_batch: int

    def close(self) -> None:
        """Release what the engine holds beyond its Python objects (captured graphs, sessions,
        TensorRT contexts). Idempotent; the pipeline calls it when it is done with the engine."""
        ...

    def infer(self, images: Array, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """Run the model.

        images: float32 [B, 3, H, W] on `device` (numpy when `host_arrays`), B <= max_batch, (H, W) = config.input_size,
            RGB normalised with config.mean/std, zero-padded outside each frame's resized area.
        image_sizes: B pairs (height, width) of each frame's resized area inside the padded input;
            boxes are clipped to it, as torchvision does.
        Returns one Detections per image, in order.
        """
        ...


@runtime_checkable
class SplitEngine(Engine, Protocol):
    """An engine whose `infer` is `detect(extract(images, image_sizes))`: two halves that may run on
    two threads, one batch apart, so that the second half of batch n overlaps the first half of n+1.

    On a CPU this puts the second core to work inside the engine (the pipeline's `features` stage runs
    `extract`, its `inference` stage `detect`). Each half is called from one thread only, and a
    Features value is used once; the engine must not reuse the memory a Features value refers to
    while it is alive (the pipeline holds a few between the two stages).
    """

    def extract(self, images: Array, image_sizes: list[tuple[int, int]]) -> "Features":
        """The first half on a batch (same arguments as `infer`): the dense trunk, as a Features value."""
        ...

    def detect(self, features: "Features") -> list[Detections]:
        """The second half: what `infer` returns for the batch `features` came from."""
        ...


@dataclass
class Features:
    """What an engine's first half leaves for its second: opaque to the pipeline.

    count: the images of the batch (the rest of a fixed-size batch is padding).
    image_sizes: per image (height, width) of its resized area, as given to `extract`.
    tensors: the engine's own intermediate results by name (torch tensors or numpy arrays, e.g. the
        FPN maps), on its device; only the engine that made them reads them.
    """

    count: int
    image_sizes: list[tuple[int, int]]
    tensors: dict[str, Any]
