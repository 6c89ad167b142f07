"""The TensorRT path: what runs without TensorRT is tested here; the build and run need TensorRT and a GPU.

TensorRT's builder cannot be installed on the machines this project is developed and tested on, so
the tests marked `needs_tensorrt` run only where `import tensorrt` works and a CUDA GPU exists
(e.g. in the docker/ image) and are skipped elsewhere with that reason.
"""

from __future__ import annotations

import importlib.util
import re

import onnx
import pytest
import torch
from onnx import helper

from export_models import INPUT_SIZE, frames
from segstream.commands.export import main as export_main
from segstream.engines.factory import EngineError, open_engine
from segstream.engines.tensorrt_build import engine_cache_name, prepare_onnx
from segstream.kernels import tensorrt_plugins

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = torch.cuda.is_available()
needs_tensorrt = pytest.mark.skipif(
    not (HAVE_TENSORRT and HAVE_GPU),
    reason="needs TensorRT >= 10.9 and a CUDA GPU (TensorRT does not install on this machine; see docs/tensorrt.md)",
)
without_tensorrt = pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")


@without_tensorrt
def test_engine_tensorrt_without_tensorrt_says_what_to_install_in_one_line(model):
    with pytest.raises(EngineError) as info:
        open_engine("tensorrt", model, "cpu", 1)
    message = str(info.value)
    assert "\n" not in message and "TensorRT" in message and "install" in message


@without_tensorrt
def test_export_tensorrt_without_tensorrt_fails_before_exporting(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("segstream.engines.artifacts.cache_root", lambda: tmp_path)
    assert export_main(["tensorrt", "--model", "shapes", "--input-size", "256x320", "-o", str(tmp_path / "m.plan")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segstream export tensorrt:") and "install TensorRT" in err and "\n" not in err
    assert not (tmp_path / "onnx").exists()


def test_engine_cache_name_changes_with_every_key_field():
    base = ("0123456789abcdef", (384, 640), 1, "fp32", "NVIDIA H100 80GB HBM3", "10.13.0.35", "a1b2c3d4e5f6")
    names = {engine_cache_name(*base)}
    for index, other in enumerate(["fedcba9876543210", (384, 672), 2, "fp16", "NVIDIA L4", "10.9.0.34", "ffffffffffff"]):
        changed = list(base)
        changed[index] = other
        names.add(engine_cache_name(*changed))
    assert len(names) == 8
    assert engine_cache_name(*base) == (
        "0123456789abcdef-384x640-b1-fp32-nvidia-h100-80gb-hbm3-trt10.13.0.35-ka1b2c3d4e5f6.plan"
    )


def test_engine_cache_key_follows_the_kernel_sources(tmp_path, monkeypatch):
    """An edited kernel source must rebuild the engine: its PTX is compiled into the plan."""
    from segstream.engines import artifacts
    from segstream.kernels import sources

    before = artifacts.kernels_digest()
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for name in (*sources.HEADERS, sources.DEVICE_SOURCE, sources.HOST_SOURCE):
        (csrc / name).write_bytes((sources.CSRC / name).read_bytes())
    (csrc / "nms.cuh").write_bytes((csrc / "nms.cuh").read_bytes() + b"\n// edited\n")
    monkeypatch.setattr(sources, "CSRC", csrc)
    assert artifacts.kernels_digest() != before


def test_parser_view_marks_segstream_nodes_as_plugins_and_keeps_the_rest(onnx_file):
    original = onnx_file.read_bytes()
    prepared = onnx.load_from_string(prepare_onnx(original, aot=True))
    plain = onnx.load_from_string(original)
    assert len(prepared.graph.node) == len(plain.graph.node)
    for mine, theirs in zip(prepared.graph.node, plain.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in mine.attribute}
        if mine.domain == "segstream":
            assert attrs["plugin_namespace"] == b"segstream"
            aot = theirs.op_type == "MultilevelRoIAlign"
            assert mine.op_type == ("MultilevelRoIAlign_4L" if aot else theirs.op_type)
            assert attrs.get("aot") == (1 if aot else None)
            assert len(mine.attribute) == len(theirs.attribute) + 1 + aot
        else:
            assert mine == theirs
    # Twice gives the same as once (no duplicate attributes).
    again = onnx.load_from_string(prepare_onnx(prepared.SerializeToString(), aot=False))
    nodes = [n for n in again.graph.node if n.op_type == "MultilevelRoIAlign_4L"]
    assert nodes and not any(a.name == "aot" for n in nodes for a in n.attribute)
    assert all(sum(a.name == "plugin_namespace" for a in n.attribute) == 1 for n in nodes)


def test_aot_roi_align_kernel_compiles_with_tensorrt_parameter_order():
    pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-bindings (NVRTC) to compile PTX")
    defines = tensorrt_plugins.aot_defines([0.25, 0.125, 0.0625, 0.03125], 7, 2, False, 224.0, 4)
    ptx = tensorrt_plugins.compile_aot_ptx(4, False, 80, tuple(sorted(defines.items()))).decode()
    entry = re.search(rf"\.entry {tensorrt_plugins.AOT_KERNEL}\((.*?)\)", ptx, re.S)
    assert entry, "the AOT entry point is missing from the PTX"
    kinds = re.findall(r"\.param \.(u64|u32)", entry.group(1))
    # inputs: boxes, counts, 4 maps (pointers); extras: rois, channels, 4 x (h, w), channels_per_block,
    # table_taps (int32); output pointer last.
    assert kinds == ["u64"] * 6 + ["u32"] * 12 + ["u64"]
    assert defines["SEG_K_MIN"] == "2" and defines["SEG_K_MAX"] == "5"
    assert float.fromhex(defines["SEG_CANONICAL_SCALE"][:-1]) == 224.0


def test_launch_geometry_covers_every_channel_and_fits_shared_memory():
    for channels, size in ((64, 7), (256, 7), (256, 14), (3, 28)):
        per_block, taps, blocks_y, shared = tensorrt_plugins.roi_align_launch(channels, size, 2)
        assert per_block * blocks_y >= channels > per_block * (blocks_y - 1)
        assert shared <= 48 * 1024


def test_plugin_module_imports_without_tensorrt():
    if HAVE_TENSORRT:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(ImportError):
        tensorrt_plugins.register()


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_matches_torch_on_gpu(model, precision, tmp_path, monkeypatch):
    monkeypatch.setattr("segstream.engines.artifacts.cache_root", lambda: tmp_path)
    from segstream.engines.torch_engine import TorchEngine

    engine = open_engine("tensorrt", model, "cuda", 2, precision=precision)
    images = frames(2, seed=21).cuda()
    sizes = [INPUT_SIZE, INPUT_SIZE]
    got = engine.infer(images, sizes)
    want = TorchEngine(model, "cuda", 2).infer(images, sizes)
    for g, w in zip(got, want):
        assert len(g) == len(w)
        if precision == "fp32":
            assert torch.equal(g.classes, w.classes)
            torch.testing.assert_close(g.boxes, w.boxes, atol=1e-2, rtol=0)
            torch.testing.assert_close(g.masks, w.masks, atol=1e-3, rtol=0)
    # The second open reuses the cached plan.
    stamp = engine.plan_path.stat().st_mtime_ns
    again = open_engine("tensorrt", model, "cuda", 2, precision=precision)
    assert again.plan_path == engine.plan_path and again.plan_path.stat().st_mtime_ns == stamp


def test_builder_refuses_a_graph_of_the_other_precision_before_needing_tensorrt(onnx_file):
    from segstream.engines.tensorrt_build import TensorRTBuildError, build_serialized_engine, graph_precision

    assert graph_precision(onnx_file.read_bytes()) == "fp32"
    with pytest.raises(TensorRTBuildError, match="--precision fp16"):
        build_serialized_engine(onnx_file, "fp16")


def _emulated_aot_kernel(tmp_path, defines: dict[str, str]):
    """The AOT RoIAlign wrapper compiled by g++ with the kernels' CUDA emulation shim (tests/kernels)."""
    import ctypes
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "kernels"))
    import cuda_emulation
    from segstream.kernels import sources

    kernels = (sources.CSRC / sources.DEVICE_SOURCE).read_text()
    kernels = re.sub(r"extern __shared__ (?:__align__\(\d+\) )?(\w[\w ]*?) (\w+)\[\];", r"extern \1 \2[];", kernels)
    wrapper = tensorrt_plugins.aot_roi_align_source(4, half=False).replace('#include "kernels.cu"', "")
    entry = r"""
extern "C" int seg_emulate_aot(unsigned gx, unsigned gy, unsigned bx, unsigned n, const unsigned* sizes, void** p) {
  if (!seg_signature_matches(segstream_trt_multilevel_roi_align, n, sizes)) return 3;
  seg_launch(segstream_trt_multilevel_roi_align, gx, gy, 1, bx, p);
  return 0;
}
"""
    macros = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    unit = tmp_path / "aot.cpp"
    unit.write_text(cuda_emulation.SHIM + macros + kernels + wrapper + cuda_emulation.LAUNCHER + entry)
    library = tmp_path / "libaot.so"
    build = subprocess.run(
        ["g++", "-std=c++20", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-pthread", f"-I{sources.CSRC}",
         str(unit), "-o", str(library)], capture_output=True, text=True, check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    lib = ctypes.CDLL(str(library))
    lib.seg_emulate_aot.argtypes = [ctypes.c_uint] * 4 + [ctypes.c_void_p, ctypes.c_void_p]
    return lib


def test_aot_roi_align_kernel_with_tensorrt_arguments_equals_the_op(tmp_path):
    """The AOT wrapper, launched as TensorRT would (inputs, int32 extras, output; the plugin's grid),
    run on the CPU by the kernels' CUDA emulation, gives the MultilevelRoIAlign op's result."""
    import ctypes
    import shutil

    import subprocess

    probe = subprocess.run(
        ["g++", "-std=c++20", "-fsyntax-only", "-x", "c++", "-"], input="#include <barrier>\nstd::barrier<> b(1);\n",
        capture_output=True, text=True, check=False,
    ) if shutil.which("g++") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs g++ with C++20 <barrier> for the kernels' CUDA emulation")
    scales = [0.25, 0.125, 0.0625, 0.03125]
    defines = tensorrt_plugins.aot_defines(scales, 7, 2, False, 224.0, 4)
    lib = _emulated_aot_kernel(tmp_path, defines)

    g = torch.Generator().manual_seed(3)
    batch, rois, channels = 2, 12, 5
    maps = [torch.randn((batch, channels, 64 // s, 96 // s), generator=g) for s in (1, 2, 4, 8)]
    xy = torch.rand((batch, rois, 2), generator=g) * 200
    boxes = torch.cat([xy, xy + 2 + torch.rand((batch, rois, 2), generator=g) * 150], -1).contiguous()
    counts = torch.tensor([rois, 7], dtype=torch.int32)
    want = torch.ops.segstream.multilevel_roi_align(maps, boxes, counts, 7, scales, 2, False, 224.0, 4)

    out = torch.full_like(want, float("nan"))
    grid, block, _, extra = tensorrt_plugins.aot_launch(
        batch, rois, channels, [tuple(m.shape[2:]) for m in maps], 7, 2
    )
    args = [ctypes.c_void_p(t.data_ptr()) for t in (boxes, counts, *maps)]
    args += [ctypes.c_int(v) for v in extra] + [ctypes.c_void_p(out.data_ptr())]
    pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
    sizes = (ctypes.c_uint * len(args))(*[ctypes.sizeof(a) for a in args])
    status = lib.seg_emulate_aot(grid[0], grid[1], block, len(args), ctypes.addressof(sizes), ctypes.addressof(pointers))
    assert status == 0, "the TensorRT argument list does not match the AOT kernel's parameters"
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)


def test_a_two_level_model_exports_and_maps_onto_the_two_level_plugin(tmp_path):
    """The bundled shapes model pools two FPN levels; its graph must reach a plugin that takes two maps."""
    from segstream.engines.export import export_onnx
    from export_models import small_model

    options = {"box_levels": ["p4", "p5"], "mask_levels": ["p3", "p4"]}
    path = export_onnx(small_model(seed=5, options=options), tmp_path / "two.onnx", 1)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    pools = [n for n in model.graph.node if n.op_type == "MultilevelRoIAlign"]
    assert [len(n.input) for n in pools] == [4, 4]  # boxes, counts, two maps
    scales = [list(helper.get_attribute_value(a)) for n in pools for a in n.attribute if a.name == "spatial_scales"]
    assert scales == [[0.0625, 0.03125], [0.125, 0.0625]]
    prepared = onnx.load_from_string(prepare_onnx(path.read_bytes(), aot=True))
    assert [n.op_type for n in prepared.graph.node if n.domain == "segstream" and "RoIAlign" in n.op_type] == [
        "MultilevelRoIAlign_2L", "MultilevelRoIAlign_2L"
    ]


@pytest.mark.parametrize("levels", [1, 2, 4, 5])
def test_roi_align_plugin_callbacks_have_one_parameter_per_map(levels):
    """tensorrt.plugin reads the callbacks' signatures: they must name every map, with TensorRT's types."""
    import inspect
    from types import SimpleNamespace
    from typing import Tuple, Union

    import numpy as np
    import numpy.typing as npt

    trtp = SimpleNamespace(TensorDesc=type("TensorDesc", (), {}), KernelLaunchParams=object, SymExprs=object)
    seen = {}
    scope = {"trtp": trtp, "npt": npt, "np": np, "Tuple": Tuple, "Union": Union,
             "_roi_align_desc": lambda boxes, features, size: seen.setdefault("desc", len(features)),
             "_roi_align_formats": lambda n: seen.setdefault("formats", n),
             "_roi_align_run": lambda *a: seen.setdefault("run", len(a[2])),
             "_roi_align_aot": lambda boxes, features, *a: seen.setdefault("aot", len(features))}
    callbacks = tensorrt_plugins.roi_align_callbacks(levels, scope)
    maps = [f"feature_{i}" for i in range(levels)]
    attrs = ["output_size", "spatial_scales", "sampling_ratio", "aligned", "canonical_scale", "canonical_level"]
    desc = inspect.signature(callbacks["desc"])
    assert list(desc.parameters) == ["boxes", "counts", *maps, *attrs]
    assert desc.parameters["feature_0"].annotation is trtp.TensorDesc
    assert list(inspect.signature(callbacks["aot"]).parameters) == ["boxes", "counts", *maps, *attrs, "outputs", "tactic"]
    assert list(inspect.signature(callbacks["run"]).parameters) == ["boxes", "counts", *maps, *attrs, "outputs", "stream"]
    tensors = [object()] * (2 + levels)
    callbacks["desc"](*tensors, 7, None, 2, 0, 224.0, 4)
    callbacks["formats"](*tensors, None)
    callbacks["run"](*tensors, 7, None, 2, 0, 224.0, 4, None, None)
    callbacks["aot"](*tensors, 7, None, 2, 0, 224.0, 4, None, 0)
    assert seen == {"desc": levels, "formats": levels, "run": levels, "aot": levels}
    assert tensorrt_plugins.roi_align_plugin_name(levels) == f"MultilevelRoIAlign_{levels}L"
