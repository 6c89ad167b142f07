"""Subcommands that live with their own modules and parse their own arguments.

Each entry maps a subcommand to `module:function`, a `main(argv) -> int` taking the arguments
after the subcommand name, so `segstream train --help` shows the trainer's own help.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable

DELEGATED = {
    "demo": ("segstream.commands.demo:main", "run the offline demo: private Redis, bundled model, demo clip"),
    "eval": ("segstream.commands.evaluate:main", "COCO mask/box AP of a clip with ground truth, through the pipeline and Redis"),
    "train": ("segstream.shapes.train:main", "train the compact model on generated shapes"),
    "export": ("segstream.commands.export:main", "export onnx|tensorrt|openvino"),
    "submit": ("segstream.commands.fleet:submit_main", "enqueue file jobs for the fleet's workers"),
    "worker": ("segstream.commands.fleet:worker_main", "run fleet jobs and cameras on this machine's engine"),
    "status": ("segstream.commands.fleet:status_main", "the fleet at a glance: workers, jobs, cameras"),
    "cameras": ("segstream.commands.fleet:cameras_main", "add|remove|list the cameras the fleet keeps running"),
    "serve": ("segstream.commands.serve:main", "run the camera service: HTTP control API, /metrics, probes, live viewer"),
}



def _delegate(target: str, name: str = "") -> Callable[[argparse.Namespace], int]:
    def call(args: argparse.Namespace) -> int:
        module, function = target.split(":")
        # On a base install a missing extra raises ModuleNotFoundError here: cli.main turns it into
        # one `segstream: error:` line naming the extra (pipeline/extras.py).
        loaded = importlib.import_module(module)
        return int(getattr(loaded, function)(args.rest) or 0)

    return call


def _register(sub: argparse._SubParsersAction) -> None:
    for name, (target, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text, add_help=False, prefix_chars="\0")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(target, name))


REGISTRARS = [_register]
