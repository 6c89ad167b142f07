"""Arrows point down: the import contract in pyproject.toml holds and covers every package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_lint_imports_keeps_every_contract() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--no-cache"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in done.stdout


def test_every_package_of_segstream_sits_in_a_layer() -> None:
    """A new top-level package must be placed in the layers, or nothing checks its arrows."""
    (layers,) = [c["layers"] for c in CONTRACTS if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {f"segstream.{p.parent.name}" for p in (ROOT / "segstream").glob("*/__init__.py")}
    assert packages == placed, f"not in a layer: {sorted(packages - placed)}; not a package: {sorted(placed - packages)}"
