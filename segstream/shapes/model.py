"""The bundled shapes model: where it lives and how to load it for direct (pipeline-free) use."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models.detection import MaskRCNN

from segstream.engines.checkpoint import CheckpointError, load_checkpoint
from segstream.engines.compact import build_compact_maskrcnn
from segstream.engines.model_config import ModelConfig

#: The checkpoint shipped in the package and used when no --model is given.
SHAPES_CHECKPOINT = Path(__file__).resolve().parents[1] / "engines" / "checkpoints" / "shapes.safetensors"


def load_shapes_model(path: str | Path | None = None, score_threshold: float | None = None) -> tuple[MaskRCNN, ModelConfig]:
    """A compact Mask R-CNN with its checkpoint's weights and test thresholds, in eval mode on CPU.

    Raises CheckpointError when the file is missing, unreadable, tampered with, or not a
    compact model; weights stored as float16 are widened to the model's float32.
    """
    config, state = load_checkpoint(path or SHAPES_CHECKPOINT)
    if score_threshold is not None:
        config = config.replace(score_threshold=score_threshold)
    if config.architecture != "compact":
        raise CheckpointError(f"{path}: architecture {config.architecture!r} is not a compact model")
    model = build_compact_maskrcnn(config)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the compact model ({str(exc).splitlines()[0]})") from None
    return model.eval(), config


def quantise_for_shipping(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors as float16 (halves the file; inference runs in float32 after loading)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
