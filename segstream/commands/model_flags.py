"""The model and engine flags of every command that loads a model (`run`, `serve`, `worker`).

    add_model_flags(parser)          # --model --weights --input-size --engine --onnx --device
                                     # --precision --batch-size --gating
    apply_model_flags(config, args)  # the flags given, over the config file's values

One definition, so the three commands take the same flags with the same help and refuse a bad
value with the same one line (`segstream: error: engine.batch_size: ...`, exit 2): argparse
checks the choices, the config's validation everything else. Light: no engine is imported.
"""

from __future__ import annotations

import argparse

from segstream.pipeline.config import ENGINE_KINDS, RunConfig, input_size_flag, override

#: Flag destination -> the config key it sets (a flag not given leaves the config's value).
CONFIG_KEYS = {
    "model": "model.name",
    "weights": "model.weights",
    "engine": "engine.kind",
    "onnx": "engine.onnx",
    "device": "engine.device",
    "precision": "engine.precision",
    "calibration": "engine.calibration",
    "batch_size": "engine.batch_size",
    "gating": "gating.mode",
}


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Add the model/engine flags to `p` (one argument group, so --help shows them together)."""
    g = p.add_argument_group("model and engine", "override the config's model: and engine: sections")
    g.add_argument("--model", help="shapes (bundled), maskrcnn_resnet50_fpn[_v2], a .safetensors checkpoint, "
                   "or an OpenVINO artifact DIR (segstream export openvino; runs without torch)")
    g.add_argument("--weights", help="local weights file for a torchvision preset")
    g.add_argument("--input-size", metavar="HxW", help="network input HxW, multiples of 32 (e.g. 384x640)")
    g.add_argument("--engine", choices=ENGINE_KINDS,
                   help="auto (default): openvino on a CPU when installed and verified, torch otherwise")
    g.add_argument("--onnx", help="ONNX file for --engine onnxruntime/tensorrt (default: exported and cached)")
    g.add_argument("--device", choices=("cpu", "cuda"))
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"),
                   help="engine precision: fp32 (default); static/tensorrt fp16; static/openvino bf16; "
                        "openvino int8 (see docs/engines.md)")
    g.add_argument("--calibration", metavar="DIR|VIDEO",
                   help="--precision int8 with a torch model: frames of its domain to quantize on "
                        "(a folder of images or a video; engine.calibration)")
    g.add_argument("--batch-size", type=int, help="frames per engine call, at most (engine.batch_size, 1-64)")
    g.add_argument("--gating", choices=("auto", "on", "off"),
                   help="motion gating: run the model only when the picture changed (auto: cameras only; "
                        "gating.mode, docs/gating.md; a stream's spec may say otherwise)")


def apply_model_flags(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """Set the config keys of the flags given in `args` (validated: ConfigError names the key)."""
    if args.input_size:
        override(config, "model.input_size", input_size_flag(args.input_size))
    for dest, key in CONFIG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            override(config, key, value)
    return config
