"""Which pip extra brings which optional package: the one-line error of a base install.

The base install (`pip install segstream`) runs cameras and files on the OpenVINO engine; the
packages below come with extras (pyproject.toml `[project.optional-dependencies]`). A command that
imports one of them on a base install stops with one line naming the extra to install, exit 2.
"""

from __future__ import annotations

# top-level import name -> the extra that installs it
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torch",
    "safetensors": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "nncf": "int8",
    "motmetrics": "eval",
    "skimage": "train",  # also in the demo extra: the shapes domain's photo backgrounds
    "pytest": "test",
}

CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def missing_extra(exc: BaseException) -> str | None:
    """The extra whose package `exc` (a ModuleNotFoundError) failed to import, else None."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    return EXTRA_OF_MODULE.get(exc.name.split(".")[0])


def missing_extra_message(command: str, exc: ModuleNotFoundError, extra: str) -> str:
    """One line: what is missing, for which command, and the pip command that adds it."""
    module = (exc.name or "").split(".")[0]
    line = f"`segstream {command}` needs {module}, which the base install leaves out: pip install 'segstream[{extra}]'"
    if extra in ("torch", "onnx", "int8"):
        line += f" (on a machine without a GPU, first: {CPU_TORCH})"
    return line
