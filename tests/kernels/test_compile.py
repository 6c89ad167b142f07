"""The CUDA sources compile for every target architecture without register spills.

nvcc (when installed) and NVRTC (from the venv's cuda-bindings; needs no GPU) both compile
``kernels.cu``; ptxas's per-kernel report is printed (shown with ``-rA`` or ``-s``) and attached
to the test report as a property, and any spill store or load fails the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from segstream.kernels import sources

ARCHS = (75, 80, 86, 89, 90)
KERNELS = {
    "segstream_multilevel_roi_align_f32",
    "segstream_multilevel_roi_align_f16",
    "segstream_nms_rank",
    "segstream_nms_mask",
    "segstream_nms_select",
    "segstream_mask_rle",
}

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def ptxas_table(report: str) -> dict[tuple[str, str], dict[str, int]]:
    """{(kernel, arch): {registers, stack, spill_stores, spill_loads}} from a ``ptxas -v`` report."""
    table: dict[tuple[str, str], dict[str, int]] = {}
    current = None
    for line in report.splitlines():
        if m := _ENTRY.search(line):
            current = (m.group(1), m.group(2))
            table[current] = {}
        elif current and (m := _SPILLS.search(line)):
            table[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current and (m := _REGISTERS.search(line)):
            table[current]["registers"] = int(m.group(1))
    return table


def summarise(table: dict[tuple[str, str], dict[str, int]]) -> str:
    lines = [f"{'kernel':36} {'arch':6} {'regs':>4} {'stack':>5} {'spill st':>8} {'spill ld':>8}"]
    for (kernel, arch), v in sorted(table.items()):
        lines.append(
            f"{kernel:36} {arch:6} {v.get('registers', -1):4} {v.get('stack', -1):5} "
            f"{v.get('spill_stores', -1):8} {v.get('spill_loads', -1):8}"
        )
    return "\n".join(lines)


def check_report(report: str, record_property, label: str) -> None:
    table = ptxas_table(report)
    summary = summarise(table)
    print(f"--- {label}: ptxas report ---\n{report}\n--- {label}: summary ---\n{summary}")
    record_property(f"{label}_ptxas", summary)
    expected = {(k, f"sm_{a}") for k in KERNELS for a in ARCHS}
    assert set(table) == expected, f"missing from the report: {sorted(expected - set(table))}"
    spilling = {key: v for key, v in table.items() if v.get("spill_stores", 1) or v.get("spill_loads", 1)}
    assert not spilling, f"register spills:\n{summary}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: nvcc compile check not run")
def test_nvcc_compiles_all_archs_without_spills(tmp_path: Path, record_property) -> None:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [
        "nvcc", "--threads", "0", "-std=c++17", "-O3", "-Xptxas", "-v", *gencode,
        "-c", str(sources.CSRC / sources.DEVICE_SOURCE), "-o", str(tmp_path / "kernels.o"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    print(" ".join(cmd))
    assert result.returncode == 0, result.stderr
    check_report(result.stderr + result.stdout, record_property, "nvcc")


def _nvrtc():
    try:
        from segstream.kernels import device_build

        device_build.nvrtc_version()
    except Exception as e:  # noqa: BLE001 - any failure to load NVRTC means: cannot check here
        pytest.skip(f"NVRTC is not loadable here ({e}): NVRTC compile check not run")
    return device_build


def test_nvrtc_compiles_all_archs_without_spills(record_property) -> None:
    device_build = _nvrtc()
    report = ""
    for arch in ARCHS:
        _, log = device_build.compile_module(arch, "cubin", ptxas_verbose=True)
        report += log
    check_report(report, record_property, "nvrtc")


def test_ptx_for_tensorrt_names_every_kernel(tmp_path: Path, monkeypatch) -> None:
    device_build = _nvrtc()
    monkeypatch.setenv("SEGSTREAM_CACHE", str(tmp_path))
    from segstream import kernels

    ptx = kernels.kernel_ptx("segstream_nms_mask", "sm_80")
    assert ".target sm_80" in ptx
    for name in KERNELS:
        assert re.search(rf"\.entry {name}\(", ptx), name
    cached = list(tmp_path.rglob("*.ptx"))
    assert len(cached) == 1 and kernels.kernel_ptx("segstream_nms_rank", 80) == ptx
    with pytest.raises(ValueError, match="unknown kernel"):
        kernels.kernel_ptx("roi_pool", "sm_80")
    assert set(device_build.KERNEL_NAMES) == KERNELS
