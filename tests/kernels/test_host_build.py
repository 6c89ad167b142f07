"""The CPU library: prebuilt and loaded without a compiler; a broken install stops a run at start.

The test-only compile helper (host_compile.py) still compiles variants once per source digest
into the cache and survives concurrent builders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.kernels import host_build, sources

sys.path.insert(0, str(Path(__file__).parent))
from host_compile import BuildError, compiled_library_path  # noqa: E402

BUILD_AND_USE = f"""
import ctypes, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from host_compile import compiled_library_path
path = compiled_library_path()
assert ctypes.CDLL(str(path)).segstream_kernels_abi_version() == 1
print(path)
"""


def test_two_processes_building_at_once_share_one_library(tmp_path: Path) -> None:
    env = {**os.environ, "SEGSTREAM_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", BUILD_AND_USE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    (path,) = paths
    assert Path(path).is_relative_to(tmp_path / "kernels")
    leftovers = [f.name for f in Path(path).parent.iterdir() if f.name != host_build.LIBRARY_NAME]
    assert leftovers == [], "temporary build files left behind"


def test_digest_follows_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = sources.source_digest("host|x")
    assert sources.source_digest("host|y") != before
    edited = tmp_path / "csrc"
    edited.mkdir()
    for name in (*sources.HEADERS, sources.DEVICE_SOURCE, sources.HOST_SOURCE):
        (edited / name).write_bytes((sources.CSRC / name).read_bytes())
    (edited / "nms.cuh").write_text((edited / "nms.cuh").read_text() + "\n// edited\n")
    monkeypatch.setattr(sources, "CSRC", edited)
    assert sources.source_digest("host|x") != before


def test_compile_errors_name_the_compiler_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "csrc"
    broken.mkdir()
    for name in (*sources.HEADERS, sources.DEVICE_SOURCE, sources.HOST_SOURCE):
        (broken / name).write_bytes((sources.CSRC / name).read_bytes())
    (broken / sources.HOST_SOURCE).write_text("this is not C++;\n")
    monkeypatch.setattr(sources, "CSRC", broken)
    monkeypatch.setenv("SEGSTREAM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BuildError, match="host.cpp"):
        compiled_library_path()
    assert not list((tmp_path / "cache").rglob("*.so")) and not list((tmp_path / "cache").rglob("*.tmp"))
