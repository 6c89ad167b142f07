"""Check the prebuilt CPU library and build the CUDA kernels ahead of first use (e.g. in a Dockerfile).

    python -m segstream.kernels                   # CPU library: where it is, and that it loads
    python -m segstream.kernels --cuda-arch 80 90 # plus NVRTC cubins and PTX for those archs
"""

from __future__ import annotations

import argparse
import sys

from segstream.kernels import device_build, host_build


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m segstream.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--cuda-arch", nargs="*", type=int, default=[], help="compute capabilities, e.g. 80 90")
    args = parser.parse_args()
    try:
        host_build.check()
    except host_build.KernelLibraryError as exc:
        print(f"segstream: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"CPU library: {host_build.library_path()}")
    for arch in args.cuda_arch:
        for target in ("cubin", "ptx"):
            device_build.cached_code(arch, target)
        print(f"CUDA sm_{arch}: cubin and PTX cached")


if __name__ == "__main__":
    main()
