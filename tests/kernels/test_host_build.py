"""The CPU library: prebuilt and loaded without a compiler; a broken install stops a run at start.

The test-only compile helper (host_compile.py) still compiles variants once per source digest
into the cache and survives concurrent builders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from segstream.kernels import host_build, sources

sys.path.insert(0, str(Path(__file__).parent))
from host_compile import BuildError, compiled_library_path  # noqa: E402
from media import write_clip  # noqa: E402

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


NO_COMPILER_USE = """
import json, sys
from segstream.kernels import host_build
host_build.check()
print(host_build.library_path())
"""


def test_the_installed_library_loads_with_no_compiler_and_builds_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "SEGSTREAM_CACHE": str(cache), "PATH": str(tmp_path / "empty"), "CXX": "/bin/false"}
    done = subprocess.run([sys.executable, "-c", NO_COMPILER_USE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.name == host_build.LIBRARY_NAME and path.parent.name == "kernels"
    assert not path.is_relative_to(cache)
    assert not cache.exists() or not list(cache.rglob("*.so")), "something was compiled at run time"


def _package_copy(tmp_path: Path, library: bytes | None) -> Path:
    """A copy of the segstream package whose kernel library is absent (None) or these bytes."""
    root = tmp_path / "site"
    package = Path(host_build.__file__).resolve().parents[1]
    shutil.copytree(package, root / "segstream", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    if library is not None:
        (root / "segstream" / "kernels" / host_build.LIBRARY_NAME).write_bytes(library)
    return root


@pytest.mark.parametrize("library, cause", [(None, "is not installed"), (b"not an ELF file\n" * 64, "does not load")])
def test_a_run_with_a_missing_or_broken_kernel_library_stops_at_start_and_publishes_nothing(
    tmp_path: Path, redis_url: str, redis_client, library: bytes | None, cause: str
) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=4)
    site = _package_copy(tmp_path, library)
    # -S: no .pth files, so no editable-install import hook (scikit-build-core's sits in front of
    # PYTHONPATH); the copy first, then this interpreter's site-packages for the dependencies.
    paths = sysconfig.get_paths()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), paths["purelib"], paths["platlib"]]),
           "SEGSTREAM_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-S", "-m", "segstream.commands.main", "run", str(clip), "--redis", redis_url, "--stream-id", "cam"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,  # cwd: -m puts it first on sys.path
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("segstream: error:")]
    assert len(errors) == 1, done.stderr
    assert host_build.LIBRARY_NAME in errors[0] and cause in errors[0]
    assert "Traceback" not in done.stderr
    assert redis_client.keys("*") == [], "something was published"
