"""Opening an engine of a given kind: torch, static, onnxruntime, openvino, tensorrt or auto, all
behind the Engine protocol.

`open_model_engine` is where a run starts: `--model` names an OpenVINO artifact directory, or the
bundled `shapes` model (shipped as an artifact, segstream/engines/bundled/shapes/), which run on the
torch-free engine (segstream/engines/openvino_runtime.py) with `--engine auto|openvino` on a CPU;
anything else (a torchvision preset, a .safetensors checkpoint, the other engines, a GPU) loads the
torch model, which needs the torch extra: without it, one EngineError/ModelError naming
`pip install 'segstream[torch]'` or the `segstream export openvino` step.

`auto` on a torch model picks the fastest engine installed and verified for the device: on a CPU,
OpenVINO when it imports and compiles the model (the compiled model is the one the run then uses),
torch otherwise; on a GPU, torch. The chosen engine's `name` says which, and why when auto fell back
to torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from segstream.engines.models import TORCH_HINT, LoadedModel, ModelError, load_model, require_torch
from segstream.engines.openvino_artifact import Artifact, ArtifactError, bundled_artifact, is_artifact, load_artifact
from segstream.engines.protocol import Engine, EngineError

if TYPE_CHECKING:
    import torch

__all__ = ["ENGINE_KINDS", "EngineError", "open_engine", "resolve_device", "usable_cores"]  # EngineError re-exported: older imports
ENGINE_KINDS = ("auto", "torch", "static", "onnxruntime", "openvino", "tensorrt")
#: Precisions each kind offers (auto: those of the engine it picks).
PRECISIONS = {
    "torch": ("fp32",),
    "static": ("fp32", "fp16", "bf16"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
    "tensorrt": ("fp32", "fp16"),
}


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(device: str) -> "torch.device":
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda: no CUDA GPU is available on this machine (use --device cpu)")
    return torch.device(device)


def open_engine(
    kind: str,
    model: LoadedModel,
    device: str = "cpu",
    max_batch: int = 1,
    onnx_path: str | None = None,
    precision: str = "fp32",
    threads: int | None = None,
    calibration: str | Path | None = None,
) -> Engine:
    """An Engine of `kind` for `model` (the ONNX/OpenVINO/TensorRT kinds build or reuse a cached artefact).

    threads: the engine's compute threads (OpenVINO inference threads; None: the engine's default).
    calibration: openvino int8 only: frames of the model's domain (a folder of images or a video).
    """
    try:
        require_torch(f"--engine {kind}")
    except ModelError as exc:
        raise EngineError(str(exc)) from None
    target = resolve_device(device)
    if kind == "auto":
        return _auto_engine(model, target, max_batch, precision, threads, calibration)
    offered = PRECISIONS.get(kind)
    if offered is not None and precision not in offered and not (kind == "torch" and precision == "fp16"):
        # (torch has always ignored fp16, which configs written for tensorrt carry.)
        raise EngineError(f"--precision {precision}: --engine {kind} offers {', '.join(offered)}")
    if kind == "openvino":
        from segstream.engines.openvino_engine import OpenVinoEngine

        return OpenVinoEngine(model, target, max_batch, precision=precision, threads=threads, calibration=calibration)
    if kind == "torch":
        from segstream.engines.torch_engine import TorchEngine

        return TorchEngine(model, target, max_batch)
    if kind == "static":
        from segstream.engines.static_engine import StaticEngine

        engine = StaticEngine(model, target, max_batch, precision=precision)
        # Every CUDA graph is captured before frames flow: a capture synchronises the whole device,
        # which mid-run would stall every stage's stream (nothing on a CPU).
        engine.warm_up()
        return engine
    if kind == "onnxruntime":
        try:
            from segstream.engines.onnxruntime_engine import OnnxRuntimeEngine
        except ImportError as exc:
            raise EngineError(f"--engine onnxruntime needs the onnx extras: pip install 'segstream[onnx]' ({exc})") from None
        return OnnxRuntimeEngine(model, target, max_batch, onnx_path=onnx_path)
    if kind == "tensorrt":
        try:
            from segstream.engines.tensorrt_engine import TensorRTEngine
        except ImportError as exc:
            raise EngineError(f"--engine tensorrt is not available ({exc})") from None
        return TensorRTEngine(model, target, max_batch, onnx_path=onnx_path, precision=precision)
    raise EngineError(f"unknown engine {kind!r}: use one of {', '.join(ENGINE_KINDS)}")


def _auto_engine(model: LoadedModel, device: "torch.device", max_batch: int, precision: str, threads: int | None,
                 calibration: str | Path | None = None) -> Engine:
    """OpenVINO on a CPU when it is installed and compiles this model; torch otherwise (see the module docstring)."""
    from segstream.engines.torch_engine import TorchEngine

    if device.type != "cpu":
        if precision not in ("fp32", "fp16"):  # (fp16 ignored, as the torch engine always has)
            raise EngineError(f"--precision {precision}: on {device.type} the auto engine is torch, which runs fp32")
        return TorchEngine(model, device, max_batch)
    if precision == "fp16":
        raise EngineError("--precision fp16 is for --engine tensorrt; on the CPU use fp32, bf16 or int8")
    import torch

    try:
        from segstream.engines.openvino_engine import OpenVinoEngine

        engine = OpenVinoEngine(model, device, max_batch, precision=precision, threads=threads, calibration=calibration)
        # Verified: one inference on a blank input (which also warms the compiled model up).
        height, width = model.config.input_size
        engine.infer(torch.zeros((1, 3, height, width)), [(height, width)])
    except Exception as exc:  # anything OpenVINO raises means: not verified here, use torch
        reason = str(exc).splitlines()[0].removeprefix("--engine openvino: ") if str(exc) else type(exc).__name__
        if precision != "fp32":
            raise EngineError(f"--precision {precision} needs the openvino engine, which is unavailable: {reason}") from None
        fallback = TorchEngine(model, device, max_batch)
        fallback.name = f"torch (auto: openvino unavailable: {reason})"
        return fallback
    engine.name = f"{engine.name} (auto)"
    return engine


#: Engines that need the torch model (the torch extra); the artifact runs on auto and openvino only.
TORCH_KINDS = ("torch", "static", "onnxruntime", "tensorrt")


@dataclass
class OpenedModel:
    """An engine ready for a run and where its model came from.

    source: the checkpoint, preset weights or artifact directory, for the run summary.
    placeholder: True when the weights are random (an untrained bundled model).
    loaded: the torch model, when one was loaded (None on the torch-free path).
    """

    engine: Engine
    source: str
    placeholder: bool
    loaded: LoadedModel | None = None


def _torch_missing() -> bool:
    try:
        require_torch("")
    except ModelError:
        return True
    return False


def _runtime_engine(artifact: Artifact, kind: str, device: str, max_batch: int, precision: str, threads: int | None,
                    score_threshold: float | None) -> Engine:
    from segstream.engines.openvino_runtime import OpenVinoRuntimeEngine

    engine = OpenVinoRuntimeEngine(artifact, max_batch, precision, threads, score_threshold=score_threshold)
    if kind == "auto":
        engine.name = f"{engine.name} (auto)"
    return engine


def open_model_engine(
    model: str,
    weights: str | None = None,
    input_size: tuple[int, int] | None = None,
    allow_download: bool = True,
    kind: str = "auto",
    device: str = "cpu",
    max_batch: int = 1,
    onnx_path: str | None = None,
    precision: str = "fp32",
    threads: int | None = None,
    score_threshold: float | None = None,
    calibration: str | Path | None = None,
) -> OpenedModel:
    """The engine a run of `--model model --engine kind` uses (see the module docstring).

    An artifact directory runs only on the torch-free engine (auto or openvino, CPU, its own input
    size; any batch, run in chunks of the exported one). The bundled shapes artifact is used whenever it fits the
    request (same kinds, no --weights, its input size, fp32/bf16); otherwise the torch model is
    loaded as before (int8 or another input size convert it on first use).
    """
    if kind not in ENGINE_KINDS:
        raise EngineError(f"unknown engine {kind!r}: use one of {', '.join(ENGINE_KINDS)}")
    if Path(model).is_dir() and not is_artifact(model):
        raise EngineError(f"--model {model}: a directory without a model artifact's sidecar "
                          f"(make one with `segstream export openvino -o {model}`)")
    if is_artifact(model):
        where = f"--model {model} is an OpenVINO artifact"
        if kind in TORCH_KINDS:
            raise EngineError(f"--engine {kind}: {where}, which runs on --engine auto or openvino "
                              f"(the other engines take the checkpoint it was exported from)")
        if device != "cpu":
            raise EngineError(f"--device {device}: {where}, which runs on the CPU (use --device cpu)")
        if weights:
            raise EngineError(f"--weights: {where}, which holds its weights; export it again to change them")
        try:
            artifact = load_artifact(model)
        except ArtifactError as exc:
            raise EngineError(str(exc)) from None
        if input_size is not None and tuple(input_size) != artifact.config.input_size:
            height, width = artifact.config.input_size
            raise EngineError(f"--input-size {input_size[0]}x{input_size[1]}: {where} exported at {height}x{width}; "
                              f"export it again with `segstream export openvino --input-size ...`")
        if precision == "fp32":  # the default: an artifact runs at the precision it was exported for
            precision = artifact.sidecar.precision
        engine = _runtime_engine(artifact, kind, device, max_batch, precision, threads, score_threshold)
        return OpenedModel(engine, str(Path(model)), False)
    bundled = bundled_artifact(model) if weights is None else None
    if bundled is not None:
        artifact = load_artifact(bundled)
        side = artifact.sidecar
        misfit = None
        if kind in TORCH_KINDS:
            misfit = f"--engine {kind}"
        elif device != "cpu":
            misfit = f"--device {device}"
        elif input_size is not None and tuple(input_size) != artifact.config.input_size:
            misfit = f"--input-size {input_size[0]}x{input_size[1]}"
        elif (precision == "int8") != (side.weights == "int8") or precision == "fp16":
            misfit = f"--precision {precision}"
        if misfit is None:
            try:
                engine = _runtime_engine(artifact, kind, device, max_batch, precision, threads, score_threshold)
                return OpenedModel(engine, f"{model} (bundled OpenVINO artifact)", False)
            except EngineError:
                # auto with torch installed falls back as before (torch, saying why); otherwise this is the error.
                if kind != "auto" or _torch_missing():
                    raise
        if _torch_missing():
            raise EngineError(
                f"{misfit}: the bundled {model} model without torch runs on --engine auto|openvino, on the CPU, at "
                f"{side.precision} and its input size; for {misfit} install the torch extra: {TORCH_HINT}")
    loaded = load_model(model, weights, input_size, allow_download)
    if score_threshold is not None:
        loaded.config = loaded.config.replace(score_threshold=score_threshold)
        loaded.network.roi_heads.score_thresh = score_threshold
    engine = open_engine(kind, loaded, device, max_batch, onnx_path, precision, threads=threads, calibration=calibration)
    return OpenedModel(engine, loaded.source, loaded.placeholder, loaded)
