"""Every command that loads a model takes the same model/engine flags and refuses a bad one alike."""

from __future__ import annotations

import argparse
import re

import pytest

from servers import segstream_cli
from segstream.commands.model_flags import add_model_flags, apply_model_flags
from segstream.pipeline.config import load_config

COMMANDS = {"run": ("run", "/nonexistent/clip.mp4"), "serve": ("serve",), "worker": ("worker",)}
MODEL_FLAGS = {"--model", "--weights", "--input-size", "--engine", "--onnx", "--device", "--precision",
               "--batch-size", "--gating", "--calibration"}


def flags_in_help(text: str, group: str = "model and engine:") -> set[str]:
    section = text.split(group, 1)[1]
    section = re.split(r"\n\S", section, maxsplit=1)[0]  # up to the next unindented heading
    return set(re.findall(r"^\s+(--[a-z-]+)", section, flags=re.M))


def test_run_serve_and_worker_list_the_same_model_and_engine_flags():
    seen = {}
    for name, command in COMMANDS.items():
        result = segstream_cli(command[0], "--help", timeout=60)
        assert result.returncode == 0, result.stderr
        seen[name] = flags_in_help(result.stdout)
    assert seen["run"] == MODEL_FLAGS, seen["run"]
    assert seen["serve"] == seen["worker"] == seen["run"]


@pytest.mark.parametrize("flag, value, error", [
    ("--batch-size", "0", "segstream: error: engine.batch_size: Input should be greater than or equal to 1"),
    ("--input-size", "tall", "segstream: error: --input-size: 'tall' is not HxW"),
])
def test_a_bad_model_flag_is_the_same_one_line_in_every_command(flag, value, error):
    for name, command in COMMANDS.items():
        result = segstream_cli(*command, flag, value, "--redis", "redis://127.0.0.1:1/0", timeout=60)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and lines == [error], (name, result.stderr)


def test_an_unknown_engine_is_refused_by_every_command_with_the_same_cause():
    causes = set()
    for name, command in COMMANDS.items():
        result = segstream_cli(*command, "--engine", "warp-drive", timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr)
        causes.add(result.stderr.strip().splitlines()[-1].split(": error: ", 1)[1])
    assert len(causes) == 1 and "argument --engine: invalid choice: 'warp-drive'" in causes.pop()


def test_the_flags_given_override_the_config_and_the_others_leave_it_alone():
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    config = apply_model_flags(load_config(None), parser.parse_args([
        "--model", "maskrcnn_resnet50_fpn", "--weights", "/w/coco.pth", "--input-size", "384x640", "--engine", "torch",
        "--onnx", "/w/m.onnx", "--device", "cuda", "--precision", "fp16", "--batch-size", "4", "--gating", "on"]))
    assert (config.model.name, config.model.weights, tuple(config.model.input_size)) == (
        "maskrcnn_resnet50_fpn", "/w/coco.pth", (384, 640))
    assert (config.engine.kind, config.engine.onnx, config.engine.device, config.engine.precision,
            config.engine.batch_size, config.gating.mode) == ("torch", "/w/m.onnx", "cuda", "fp16", 4, "on")
    default = load_config(None)
    untouched = apply_model_flags(load_config(None), parser.parse_args([]))
    assert untouched.model_dump() == default.model_dump()
