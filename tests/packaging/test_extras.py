"""The extras the CLI's one-line error names are the ones pyproject.toml declares, holding that package."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from segstream.pipeline.extras import EXTRA_OF_MODULE

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
DISTRIBUTION_OF_MODULE = {"skimage": "scikit-image"}  # import name -> PyPI name, where they differ


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_every_named_extra_exists_and_brings_the_missing_package() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in EXTRA_OF_MODULE.items():
        assert extra in extras, f"{module}: extra {extra!r} is not declared"
        assert DISTRIBUTION_OF_MODULE.get(module, module) in _names(extras[extra]), f"{extra!r} lacks {module}"


def test_the_base_install_has_no_torch_and_all_has_every_extra() -> None:
    base = _names(PYPROJECT["project"]["dependencies"])
    assert not base & {"torch", "torchvision", "triton", "safetensors", "onnx", "onnxruntime", "nncf", "motmetrics"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    (everything,) = extras["all"]
    assert set(everything[everything.index("[") + 1:-1].split(",")) == set(extras) - {"all"}
