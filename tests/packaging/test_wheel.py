"""The wheel a user installs: built from the committed files, run with the base dependencies only, no compiler.

`pip wheel .` on a clean export of HEAD (`git archive`: committed files only, no in-tree build
left over) gives a platform wheel with the CPU kernels inside; a fresh venv gets that wheel and
the base dependencies from PyPI (the pip cache keeps that to one download per machine); with no
C++ compiler reachable (PATH holds only an empty folder, CXX/CC are /bin/false), `segstream run`
on a clip of the bundled model's domain publishes every frame with instances and one
end-of-stream entry through a real redis-server, and exits 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from media import count_decodable_frames, write_shapes_clip

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "torchvision", "triton", "nvidia")  # what a base install must not contain


def _git(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _git("rev-parse", "--verify", "HEAD").returncode != 0:
        pytest.skip("not a git checkout: the wheel check builds from the committed files")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    archive = _git("archive", "--format=tar", "HEAD")
    assert archive.returncode == 0, archive.stderr.decode()
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    assert not list(source.rglob("*.so")), "a compiled library is committed"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-4000:]
    (path,) = (work / "dist").glob("segstream-*.whl")
    return path


def test_the_wheel_is_a_platform_wheel_carrying_the_cpu_kernels(wheel: Path) -> None:
    assert not wheel.name.endswith("-any.whl"), wheel.name
    assert "linux" in wheel.name or "macosx" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "segstream/kernels/libsegstream_kernels.so" in names
    assert "segstream/kernels/csrc/host.cpp" in names  # the NVRTC build compiles the shared headers at run time


@pytest.fixture(scope="module")
def base_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "base"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-4000:]
    return venv


def test_the_base_install_holds_no_torch_and_no_cuda_libraries(base_venv: Path) -> None:
    (site,) = (base_venv / "lib").glob("python3*/site-packages")
    present = sorted(p.name for p in site.iterdir() if p.name.lower().startswith(FORBIDDEN))
    assert present == []


def test_a_fresh_base_venv_runs_a_file_through_redis_with_no_compiler(
    base_venv: Path, tmp_path: Path, redis_url: str, redis_client
) -> None:
    clip = write_shapes_clip(tmp_path / "clip.mp4", frames=12)
    decoded = count_decodable_frames(clip)
    empty = tmp_path / "no-tools"
    empty.mkdir()
    env = {
        "PATH": str(empty), "CXX": "/bin/false", "CC": "/bin/false", "HOME": str(tmp_path),
        "SEGSTREAM_CACHE": str(tmp_path / "cache"), "LANG": "C.UTF-8",
    }
    assert shutil.which("c++", path=env["PATH"]) is None and shutil.which("g++", path=env["PATH"]) is None
    done = subprocess.run(
        [str(base_venv / "bin" / "segstream"), "run", str(clip), "--redis", redis_url, "--stream-id", "wheel"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    entries = [json.loads(fields[b"data"]) for _, fields in redis_client.xrange("segstream:wheel")]
    frames = [m for m in entries if "frame" in m and not m.get("eos")]
    ends = [m for m in entries if m.get("eos")]
    assert [m["frame"] for m in frames] == list(range(decoded)), "every frame once, in order"
    assert all(m["instances"] for m in frames), "a frame of the bundled model's domain came without instances"
    assert ends == [{"schema": 1, "stream": "wheel", "eos": True, "frames": decoded}]
    assert not list((tmp_path / "cache").rglob("*.so")), "something was compiled at run time"


@pytest.mark.parametrize("command, extra", [
    (["export", "onnx", "--model", "shapes"], "torch"),
    (["train", "--steps", "1"], "torch"),
])
def test_a_base_install_asked_for_an_extras_command_names_the_extra(
    base_venv: Path, tmp_path: Path, command: list[str], extra: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SEGSTREAM_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([str(base_venv / "bin" / "segstream"), *command], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-4000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segstream: error:"), done.stderr
    assert f"segstream[{extra}]" in lines[0]
    assert "Traceback" not in done.stderr
