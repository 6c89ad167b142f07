"""Installed size of segstream: the base install (`pip install segstream`) vs the full one (`.[all]`).

Builds the wheel from the committed files (`git archive HEAD`, like tests/packaging/test_wheel.py),
installs it into two fresh venvs and measures each site-packages with `du` (MiB, 2^20 bytes, on
disk), minus pip/setuptools (the venv's own tools, not segstream's). Prints the largest packages
of each, the ratio base / full, and whether the base install holds torch, torchvision, triton or
nvidia-* (it must not).

    .venv/bin/python benchmarks/install_size.py [--skip-full] [--extras demo,eval] [--keep DIR]

--extras also measures the base install plus each named extra (e.g. demo: what `make demo` installs).

The full venv gets torch/torchvision pinned as in the Makefile (torch==2.14.1 torchvision==0.29.1,
PyPI's CUDA builds), then the wheel with the `all` extra.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
VENV_TOOLS = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth")
FORBIDDEN = ("torch", "torchvision", "triton", "nvidia")


def mib(path: Path) -> float:
    """Disk usage of `path` in MiB (du -sk)."""
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def build_wheel(work: Path) -> Path:
    source = work / "src"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(source)], check=True)
    (wheel,) = (work / "dist").glob("segstream-*.whl")
    return wheel


def venv_with(path: Path, *requirements: str) -> Path:
    """A fresh venv at `path` with `requirements` installed in order; returns its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q"]
    for group in requirements:
        subprocess.run([*pip, *group.split()], check=True)
    (site,) = (path / "lib").glob("python3*/site-packages")
    return site


def report(label: str, site: Path) -> float:
    sizes = {p.name: mib(p) for p in site.iterdir()}
    tools = sum(v for k, v in sizes.items() if k.startswith(VENV_TOOLS))
    total = mib(site) - tools
    print(f"\n{label}: {total:.0f} MiB site-packages (without pip/setuptools, {tools:.0f} MiB)")
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:12]:
        if not name.startswith(VENV_TOOLS):
            print(f"  {size:7.1f} MiB  {name}")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="measure the base install only")
    parser.add_argument("--extras", default="", help="comma-separated extras to measure on top of the base install")
    parser.add_argument("--keep", type=Path, help="build the venvs here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segstream-size-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        wheel = build_wheel(work)
        print(f"wheel: {wheel.name} ({mib(wheel):.1f} MiB)")
        base_site = venv_with(work / "base", str(wheel))
        base = report("base install (pip install segstream)", base_site)
        forbidden = sorted(p.name for p in base_site.iterdir() if p.name.lower().startswith(FORBIDDEN))
        print(f"  torch/torchvision/triton/nvidia-* in the base install: {forbidden or 'none'}")
        for extra in filter(None, args.extras.split(",")):
            extra_site = venv_with(work / f"base-{extra}", f"{wheel}[{extra}]")
            size = report(f"base + {extra} extra (pip install 'segstream[{extra}]')", extra_site)
            leaked = sorted(p.name for p in extra_site.iterdir() if p.name.lower().startswith(FORBIDDEN))
            print(f"  torch/torchvision/triton/nvidia-* with the {extra} extra: {leaked or 'none'}; "
                  f"{size - base:+.0f} MiB over the base")
        if not args.skip_full:
            full_site = venv_with(work / "full", " ".join(TORCH_PINS), f"{wheel}[all]")
            full = report("full install (torch pins, then segstream[all])", full_site)
            print(f"\nbase / full: {base / full:.3f} ({base:.0f} / {full:.0f} MiB)")
    return 1 if forbidden else 0


if __name__ == "__main__":
    sys.exit(main())
