"""The architecture description that travels with every checkpoint.

A checkpoint file stores this next to its tensors, so the file alone fully describes its model:
the network family, the class names, the fixed network input size, the input normalisation and
the detection thresholds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("compact", "resnet50_fpn", "resnet50_fpn_v2")


def fit_size(height: int, width: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a frame resized to fit inside input_size (height, width), keeping its aspect ratio.

    The one rule for every path that feeds the network: the pipeline's preprocess, int8
    calibration (engines/calibration.py) and the shapes training data.
    """
    limit_h, limit_w = input_size
    scale = min(limit_h / height, limit_w / width)
    # The epsilon keeps an exact fit (e.g. 360 * (384/360)) from flooring one pixel short.
    return (min(limit_h, max(1, int(height * scale + 1e-4))), min(limit_w, max(1, int(width * scale + 1e-4))))


class ModelConfigError(ValueError):
    """A model description is malformed; the message names the bad key."""


@dataclass(frozen=True)
class ModelConfig:
    """What a Mask R-CNN is and how to feed it.

    architecture: one of ARCHITECTURES.
    class_names: index 0 is the background ("__background__"), ids 1..C are the classes.
    input_size: (height, width) of the network input in pixels; frames are resized to fit inside it
        keeping their aspect ratio and zero-padded at the bottom/right. Both multiples of 32.
    mean, std: per-channel RGB normalisation applied to images scaled to [0, 1].
    score_threshold: detections below it are discarded.
    nms_threshold: IoU above which the box head's per-class NMS suppresses a detection.
    max_detections: K, the most detections per image.
    mask_threshold: mask probability at which a pixel belongs to the instance.
    rpn_pre_nms_top_n / rpn_post_nms_top_n: proposals per level before NMS / in total after NMS (test time).
    options: architecture-specific knobs (widths of a compact model, ...), JSON-serialisable.
    """

    architecture: str
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    score_threshold: float = 0.5
    nms_threshold: float = 0.5
    max_detections: int = 100
    mask_threshold: float = 0.5
    rpn_pre_nms_top_n: int = 1000
    rpn_post_nms_top_n: int = 1000
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        self.validate()

    @property
    def num_classes(self) -> int:
        """Number of classes including the background."""
        return len(self.class_names)

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ModelConfigError(f"architecture: {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        if len(self.class_names) < 2:
            raise ModelConfigError("class_names: needs the background and at least one class")
        if len(self.input_size) != 2 or any(v <= 0 or v % 32 for v in self.input_size):
            raise ModelConfigError(f"input_size: {list(self.input_size)} must be two positive multiples of 32")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ModelConfigError("mean/std: need three values each, std > 0")
        for key in ("score_threshold", "nms_threshold", "mask_threshold"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ModelConfigError(f"{key}: {value} is not within [0, 1]")
        for key in ("max_detections", "rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
            if int(getattr(self, key)) <= 0:
                raise ModelConfigError(f"{key}: must be a positive integer")

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelConfigError(f"model config is not valid JSON: {exc}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        if not isinstance(raw, dict):
            raise ModelConfigError("model config must be a mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelConfigError(f"{unknown[0]}: unknown model config key")
        missing = [k for k in ("architecture", "class_names", "input_size") if k not in raw]
        if missing:
            raise ModelConfigError(f"{missing[0]}: missing from model config")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ModelConfigError):
                raise
            raise ModelConfigError(f"model config: {exc}") from None
