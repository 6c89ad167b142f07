"""Which model a `--model NAME|PATH` means, and building it with its weights.

Names:
  shapes                     the bundled compact model (segstream/engines/checkpoints/shapes.safetensors);
                             a ModelError when that file is missing (never an untrained network)
  maskrcnn_resnet50_fpn      torchvision COCO preset, weights from a local file or torchvision's cache
  maskrcnn_resnet50_fpn_v2   likewise
  PATH.safetensors           any checkpoint in the project format
Loading never unpickles: project checkpoints are safetensors, torchvision weights go through
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from segstream.engines.checkpoint import CheckpointError, load_checkpoint
from segstream.engines.model_config import ModelConfig

if TYPE_CHECKING:  # torch loads when a network is built: this module's names import on a base install
    import torch
    import torchvision
    from torchvision.models.detection import MaskRCNN

TORCH_HINT = "pip install 'segstream[torch]'"

BUNDLED_DIR = Path(__file__).parent / "checkpoints"
BUNDLED = {"shapes": BUNDLED_DIR / "shapes.safetensors"}
SHAPES_CLASSES = ("__background__", "circle", "square", "triangle", "star")
PRESETS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
DEFAULT_MODEL = "shapes"
PRESET_INPUT_SIZE = (800, 1344)  # torchvision's min_size 800 / max_size 1333, as multiples of 32


class ModelError(RuntimeError):
    """A model cannot be found or loaded; the message is one line for the user."""


@dataclass
class LoadedModel:
    """A ready network (eval mode, CPU) and its description.

    placeholder: True when the weights are random (the bundled model is not trained yet).
    source: where the weights came from, for the run summary.
    """

    config: ModelConfig
    network: MaskRCNN
    placeholder: bool
    source: str


def build_network(config: ModelConfig) -> MaskRCNN:
    """An untrained torchvision MaskRCNN of the architecture `config` describes."""
    import torchvision

    if config.architecture == "compact":
        from segstream.engines.compact import build_compact_maskrcnn

        return build_compact_maskrcnn(config)
    builder = getattr(torchvision.models.detection, f"maskrcnn_{config.architecture}")
    height, width = config.input_size
    return builder(
        weights=None,
        weights_backbone=None,
        num_classes=config.num_classes,
        min_size=min(height, width),
        max_size=max(height, width),
        image_mean=list(config.mean),
        image_std=list(config.std),
    )


def apply_test_thresholds(network: MaskRCNN, config: ModelConfig) -> None:
    """Make the network's RPN and box head use the config's test-time thresholds."""
    network.rpn._pre_nms_top_n["testing"] = config.rpn_pre_nms_top_n
    network.rpn._post_nms_top_n["testing"] = config.rpn_post_nms_top_n
    network.roi_heads.score_thresh = config.score_threshold
    network.roi_heads.nms_thresh = config.nms_threshold
    network.roi_heads.detections_per_img = config.max_detections


def preset_config(name: str, input_size: tuple[int, int] | None = None) -> ModelConfig:
    """The ModelConfig of a torchvision COCO preset (class names from torchvision's metadata)."""
    weights = _preset_weights(name)
    return ModelConfig(
        architecture=name.removeprefix("maskrcnn_"),
        class_names=tuple(weights.meta["categories"]),
        input_size=tuple(input_size or PRESET_INPUT_SIZE),
        score_threshold=0.5,
        nms_threshold=0.5,
        max_detections=100,
    )


def _preset_weights(name: str) -> "torchvision.models.WeightsEnum":
    import torchvision

    enum = {
        "maskrcnn_resnet50_fpn": torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights,
        "maskrcnn_resnet50_fpn_v2": torchvision.models.detection.MaskRCNN_ResNet50_FPN_V2_Weights,
    }[name]
    return enum.DEFAULT


def preset_cache_path(name: str) -> Path:
    """Where torchvision keeps the preset's downloaded weights."""
    import torch

    url = _preset_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _fetch_preset(name: str, timeout: float = 20.0) -> Path:
    path = preset_cache_path(name)
    url = _preset_weights(name).url
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise ModelError(
            f"weights for {name} are not in {path} and could not be downloaded ({reason}); "
            f"copy {os.path.basename(url)} there or pass --weights FILE"
        ) from None
    tmp.replace(path)
    return path


def _load_torch_weights(path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean the same to the user
        raise ModelError(f"cannot load weights from {path} ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return state


def _into_network(network: MaskRCNN, state: dict[str, torch.Tensor], where: str) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise ModelError(f"weights in {where} do not fit the model: {first[:200]}") from None


def load_model(
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    input_size: tuple[int, int] | None = None,
    allow_download: bool = True,
) -> LoadedModel:
    """Resolve `model` (a name above or a checkpoint path) into a network with its weights.

    weights: a local weights file for a torchvision preset (a .pth state dict or a project
        .safetensors checkpoint); default: torchvision's cache, downloaded when online.
    input_size: override the network input (height, width), multiples of 32.
    Without torch (a base install) this is one ModelError naming the extra to install.
    """
    from segstream.engines.openvino_artifact import is_artifact

    if is_artifact(model):
        raise ModelError(f"--model {model} is an OpenVINO artifact: it runs on --engine auto or openvino, on the CPU")
    require_torch(f"--model {model}", model)
    if model in PRESETS:
        config = preset_config(model, input_size)
        network = build_network(config)
        if weights is not None and weights.endswith(".safetensors"):
            _, state = _checkpoint(weights)
            source = weights
        else:
            path = Path(weights) if weights else preset_cache_path(model)
            if weights and not path.is_file():
                raise ModelError(f"weights file not found: {path}")
            if not path.is_file():
                if not allow_download:
                    raise ModelError(f"weights for {model} are not in {path}; copy them there or pass --weights FILE")
                path = _fetch_preset(model)
            state = _load_torch_weights(path)
            source = str(path)
        _into_network(network, state, source)
        placeholder = False
    elif model in BUNDLED or model.endswith(".safetensors") or Path(model).is_file():
        path = BUNDLED.get(model, Path(model))
        if model in BUNDLED and not path.is_file():
            # Never an untrained network in its place: its detections would be noise, published as results.
            raise ModelError(f"the bundled {model} model's weights are missing ({path}): reinstall segstream "
                             f"or pass --model a .safetensors checkpoint")
        config, state = _checkpoint(str(path))
        network = build_network(config)
        _into_network(network, state, str(path))
        placeholder, source = False, str(path)
        if input_size is not None:
            config = config.replace(input_size=tuple(input_size))
    else:
        known = ", ".join((*BUNDLED, *PRESETS))
        raise ModelError(f"unknown model {model!r}: use one of {known} or a .safetensors checkpoint path")
    apply_test_thresholds(network, config)
    network.eval()
    return LoadedModel(config=config, network=network, placeholder=placeholder, source=source)


def require_torch(what: str, model: str | None = None) -> None:
    """ModelError naming the torch extra (and, for a model, the artifact route) when torch or
    torchvision do not import."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        route = "" if model is None else (
            f" (or, where torch is installed, `segstream export openvino --model {model} -o DIR` once and run --model DIR here)")
        raise ModelError(f"{what} needs torch, which this install does not have: {TORCH_HINT}{route}") from None


def placeholder_config(name: str) -> ModelConfig:
    """Architecture of the bundled model, for building a network with random weights (tests, benchmarks)."""
    return ModelConfig(
        architecture="compact",
        class_names=SHAPES_CLASSES,
        input_size=(384, 640),
        score_threshold=0.5,
        max_detections=20,
        rpn_pre_nms_top_n=300,
        rpn_post_nms_top_n=150,
    )


def _checkpoint(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
