"""Fixtures of the export tests: one small random-weight model and its ONNX export (batch 2)."""

from __future__ import annotations

import warnings

import pytest

from export_models import ONNX_BATCH, small_model


@pytest.fixture(scope="session")
def model():
    return small_model()


@pytest.fixture(scope="session")
def onnx_file(model, tmp_path_factory):
    from segstream.engines.export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", ONNX_BATCH)
