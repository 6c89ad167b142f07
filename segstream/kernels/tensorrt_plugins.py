"""TensorRT plugins for the two `segstream` ONNX nodes, on TensorRT's Python plugin API (`tensorrt.plugin`).

    segstream::MultilevelRoIAlign   inputs boxes f32 [B,R,4], counts i32 [B], feature_0..L-1 f32|f16 [B,C,H_l,W_l]
                                    (L = 1..5: registered as MultilevelRoIAlign_<L>L, one plugin per L)
                                    -> f32|f16 [B,R,C,S,S]
                                    attributes output_size, spatial_scales, sampling_ratio, aligned,
                                    canonical_scale, canonical_level
    segstream::BatchedNMS           inputs boxes f32 [B,N,4], scores f32 [B,N], classes i32 [B,N]
                                    -> count i32 [B], indices i32 [B,K], boxes f32 [B,K,4], scores f32 [B,K],
                                       classes i32 [B,K]; attributes iou_threshold, score_threshold, max_outputs

These are the names and attributes of segstream/engines/custom_ops.py; TensorRT's ONNX parser finds
the plugin by op type and namespace (segstream.engines.tensorrt_build marks the nodes with
`plugin_namespace`). The code is the kernels' own CUDA (csrc/kernels.cu):

- MultilevelRoIAlign is one kernel launch, so it has an `aot_impl`: a small `extern "C"` wrapper
  with TensorRT's AOT parameter order (inputs, int32 extra arguments, outputs) around
  `segstream::multilevel_roi_align_block`, with the float attributes compiled in as constants
  (AOT extra arguments are integers only), compiled to PTX with NVRTC and stored in the engine: no
  Python at run time. Its `impl` (used where TensorRT has no AOT support) calls
  `segstream.kernels.multilevel_roi_align` on TensorRT's stream.
- BatchedNMS is three launches with a scratch bit matrix, which an AOT plugin (one kernel, no
  workspace) cannot express; its `impl` calls `segstream.kernels.batched_nms` on TensorRT's stream
  (the engine then needs Python and torch at run time, as segstream's runner has anyway).

Importing this module needs neither TensorRT nor a GPU; `register()` defines the plugins and
needs TensorRT >= 10.9 (AOT: a release that has `tensorrt.plugin.aot_impl`).
Not executed on the machines this project is developed on (no TensorRT, no GPU); the wrapper
source and its NVRTC compilation are tested there.
"""

# No `from __future__ import annotations` here: tensorrt.plugin validates the plugin functions'
# annotations as live classes (issubclass), which postponed (string) annotations would break.
import functools
import threading
from typing import Sequence

import numpy as np

from segstream.kernels import sources
from segstream.kernels.roi_align import _OUTPUTS_PER_BLOCK, _TABLE_TAPS, _TAP_BYTES, _THREADS

NAMESPACE = "segstream"
ROI_ALIGN = "MultilevelRoIAlign"
NMS = "BatchedNMS"
#: Feature-map counts the RoIAlign plugin comes in (the kernels take 1..5). TensorRT's Python
#: plugins have a fixed signature, so there is one plugin per count, `MultilevelRoIAlign_<L>L`;
#: tensorrt_build gives each ONNX node the name of its count in the parser's view of the file.
PLUGIN_LEVELS = (1, 2, 3, 4, 5)
AOT_KERNEL = "segstream_trt_multilevel_roi_align"


class PluginError(RuntimeError):
    """A plugin cannot be defined or compiled; the message says why in one line."""


def roi_align_plugin_name(levels: int) -> str:
    """Op type of the RoIAlign plugin for `levels` feature maps (the ONNX node's, as the parser sees it)."""
    if levels not in PLUGIN_LEVELS:
        raise PluginError(f"RoIAlign takes 1..5 feature maps, not {levels}")
    return f"{ROI_ALIGN}_{levels}L"


def roi_align_callbacks_source(levels: int) -> str:
    """Python source of the four RoIAlign plugin callbacks for `levels` maps.

    tensorrt.plugin reads each callback's parameters and annotations, so each level count needs
    functions with feature_0..feature_{L-1} spelled out; they forward to the shared _roi_align_*
    implementations with the maps as a tuple. Evaluated with trtp, npt, np, Tuple and Union in scope.
    """
    feats = ", ".join(f"feature_{i}" for i in range(levels))
    typed = ", ".join(f"feature_{i}: trtp.TensorDesc" for i in range(levels))
    attrs = ("output_size: int, spatial_scales: npt.NDArray[np.float32], sampling_ratio: int, aligned: int, "
             "canonical_scale: float, canonical_level: int")
    names = "output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level"
    return (
        f"def desc(boxes: trtp.TensorDesc, counts: trtp.TensorDesc, {typed}, {attrs}) -> trtp.TensorDesc:\n"
        f"    return _roi_align_desc(boxes, ({feats},), output_size)\n\n"
        f"def formats(boxes, counts, {feats}, outputs):\n"
        f"    return _roi_align_formats({levels})\n\n"
        f"def run(boxes, counts, {feats}, {names}, outputs, stream) -> None:\n"
        f"    _roi_align_run(boxes, counts, ({feats},), {names}, outputs, stream)\n\n"
        f"def aot(boxes: trtp.TensorDesc, counts: trtp.TensorDesc, {typed}, {attrs}, outputs: Tuple[trtp.TensorDesc],\n"
        f"        tactic: int) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:\n"
        f"    return _roi_align_aot(boxes, ({feats},), {names})\n"
    )


def roi_align_callbacks(levels: int, scope: dict) -> dict:
    """The callbacks of roi_align_callbacks_source(levels), defined in a copy of `scope`."""
    namespace = dict(scope)
    exec(compile(roi_align_callbacks_source(levels), f"<segstream RoIAlign plugin, {levels} levels>", "exec"), namespace)
    return {name: namespace[name] for name in ("desc", "formats", "run", "aot")}


# ---------------------------------------------------------------- AOT RoIAlign: source, launch, PTX


def _float_literal(value: float) -> str:
    """Exact C++17 hex literal of `value` rounded to float32 (e.g. 0x1p-2f)."""
    return float(np.float32(value)).hex() + "f"


def aot_roi_align_source(num_levels: int, half: bool) -> str:
    """CUDA source of the AOT RoIAlign kernel for `num_levels` maps (f16 storage when `half`).

    Parameters, in TensorRT's AOT order: boxes, counts, feature_0..L-1 (the plugin inputs), then
    int32 rois, channels, h_0, w_0, .., h_{L-1}, w_{L-1}, channels_per_block, table_taps (extra
    arguments), then out. The level rule's constants come from macros SEG_* (see aot_defines).
    """
    if not 1 <= num_levels <= 5:
        raise PluginError(f"RoIAlign takes 1..5 feature maps, not {num_levels}")
    t = "seg_half" if half else "float"
    maps = [f"f{i}" for i in range(num_levels)]
    padded = maps + ["f0"] * (5 - num_levels)  # unused slots: any valid pointer, as the kernels do
    sizes = [f"h{i}, w{i}" if i < num_levels else "1, 1" for i in range(5)]
    scales = [f"SEG_S{i}" if i < num_levels else "1.0f" for i in range(5)]
    params = ", ".join(
        ["const float* boxes", "const int* counts", *(f"const {t}* {m}" for m in maps), "int rois", "int channels"]
        + [f"int h{i}, int w{i}" for i in range(num_levels)]
        + ["int channels_per_block", "int table_taps", f"{t}* out"]
    )
    return (
        '#include "kernels.cu"\n\n'
        f'extern "C" __global__ void __launch_bounds__({_THREADS}) {AOT_KERNEL}({params}) {{\n'
        f"  segstream::multilevel_roi_align_block<{t}>(\n"
        f"      {', '.join(padded)}, boxes, counts, rois, channels, {num_levels},\n"
        f"      {', '.join(sizes)},\n"
        f"      {', '.join(scales)},\n"
        "      SEG_K_MIN, SEG_K_MAX, SEG_CANONICAL_SCALE, SEG_CANONICAL_LEVEL,\n"
        "      SEG_POOLED, SEG_SAMPLING_RATIO, SEG_ALIGNED, channels_per_block, table_taps, out);\n"
        "}\n"
    )


def level_range(spatial_scales: Sequence[float]) -> tuple[int, int]:
    """(k_min, k_max) as the kernels (and torchvision) derive them from the scales."""
    k_min = int(-np.log2(np.float32(spatial_scales[0])))
    k_max = int(-np.log2(np.float32(spatial_scales[-1])))
    return k_min, k_max


def aot_defines(
    spatial_scales: Sequence[float], output_size: int, sampling_ratio: int, aligned: bool,
    canonical_scale: float, canonical_level: int,
) -> dict[str, str]:
    """The SEG_* macros of aot_roi_align_source: the plugin attributes, compiled in."""
    k_min, k_max = level_range(spatial_scales)
    defines = {f"SEG_S{i}": _float_literal(s) for i, s in enumerate(spatial_scales)}
    defines.update(
        SEG_K_MIN=str(k_min), SEG_K_MAX=str(k_max), SEG_CANONICAL_SCALE=_float_literal(canonical_scale),
        SEG_CANONICAL_LEVEL=_float_literal(float(canonical_level)), SEG_POOLED=str(int(output_size)),
        SEG_SAMPLING_RATIO=str(int(sampling_ratio)), SEG_ALIGNED=str(int(bool(aligned))),
    )
    return defines


def roi_align_launch(channels: int, output_size: int, sampling_ratio: int) -> tuple[int, int, int, int]:
    """(channels_per_block, table_taps, blocks along y, shared bytes): the kernels' own launch geometry.

    Grid x is B*R (one box per block row), grid y covers the channels in chunks of
    channels_per_block; table_taps -1 means the shared tap table is not used.
    """
    bins = output_size * output_size
    per_block = max(1, min(channels, -(-_OUTPUTS_PER_BLOCK // bins)))
    table = bins * sampling_ratio * sampling_ratio if sampling_ratio > 0 else 0
    taps = table if 0 < table <= _TABLE_TAPS else -1
    return per_block, taps, -(-channels // per_block), max(taps, 0) * _TAP_BYTES


def aot_launch(
    batch: int, rois: int, channels: int, sizes: Sequence[tuple[int, int]], output_size: int, sampling_ratio: int
) -> tuple[tuple[int, int], int, int, list[int]]:
    """Launch of the AOT RoIAlign kernel: ((grid x, grid y), block, shared bytes, int32 extra arguments).

    sizes: (height, width) of each feature map. The extra arguments follow aot_roi_align_source:
    rois, channels, h_0, w_0, ..., channels_per_block, table_taps.
    """
    per_block, taps, blocks_y, shared = roi_align_launch(channels, output_size, sampling_ratio)
    extra = [rois, channels, *(v for hw in sizes for v in hw), per_block, taps]
    return (batch * rois, blocks_y), _THREADS, shared, extra


def _constant(expr) -> int:
    if not expr.is_constant:
        raise PluginError("the AOT RoIAlign plugin needs static shapes")
    value = expr.constant_value  # a method in the TensorRT 10/11 sources, a property in some builds
    return int(value() if callable(value) else value)


def _out_buffer(size: int) -> bytes:
    # NVRTC writes through the buffer's pointer; CPython shares its empty and one-byte bytes
    # objects, so a buffer must be at least two bytes to be private.
    return bytes(max(size, 2))


@functools.lru_cache(maxsize=32)
def compile_aot_ptx(num_levels: int, half: bool, arch: int, defines: tuple[tuple[str, str], ...]) -> bytes:
    """PTX (compute_<arch>) of the AOT RoIAlign kernel; NVRTC from cuda-bindings, no GPU needed."""
    from segstream.kernels.device_build import DeviceBuildError, compile_source

    try:
        ptx, _ = compile_source(aot_roi_align_source(num_levels, half).encode(), "segstream_trt_roi_align.cu",
                                arch, "ptx", defines)
    except DeviceBuildError as exc:
        raise PluginError(f"the AOT RoIAlign kernel did not compile: {str(exc)[:2000]}") from None
    return ptx


def _device_arch() -> int:
    """Compute capability of the current GPU, capped at the newest this NVRTC targets (PTX is forward-JIT)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    try:
        from segstream.kernels.device_build import supported_archs

        supported = [a for a in supported_archs() if a <= arch]
        return max(supported) if supported else arch
    except Exception:  # an NVRTC without the query: the device's own arch
        return arch


# ---------------------------------------------------------------- plugin definitions (need TensorRT)

_lock = threading.Lock()
_registered = False
aot_available = False


def register() -> bool:
    """Define both plugins in TensorRT's plugin registry (idempotent). Returns whether the
    RoIAlign plugin has its AOT implementation. Raises ImportError without TensorRT."""
    global _registered, aot_available
    with _lock:
        if _registered:
            return aot_available
        import tensorrt.plugin as trtp

        _define(trtp)
        _registered = True
        return aot_available


def _define(trtp) -> None:  # noqa: C901 - one place for both plugins' callbacks
    global aot_available
    from typing import Tuple, Union

    import numpy.typing as npt
    import tensorrt as trt

    def _roi_align_desc(boxes, features, output_size):
        shape = (boxes.shape_expr[0], boxes.shape_expr[1], features[0].shape_expr[1], output_size, output_size)
        return trtp.from_shape_expr(shape, dtype=features[0].dtype)

    def _roi_align_formats(levels):
        # Maps and output share one dtype; boxes stay float32 (pixel coordinates need the mantissa).
        return [trtp.AutoTuneCombination(", ".join(["FP32", "INT32"] + ["FP32|FP16"] * (levels + 1)), "LINEAR")]

    def _roi_align_run(boxes, counts, features, output_size, spatial_scales, sampling_ratio, aligned,
                       canonical_scale, canonical_level, outputs, stream) -> None:
        import torch

        from segstream.kernels import multilevel_roi_align

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            view = lambda t: torch.as_tensor(t, device="cuda")  # noqa: E731
            pooled = multilevel_roi_align(
                [view(f) for f in features], view(boxes), int(output_size),
                [float(s) for s in spatial_scales], sampling_ratio=int(sampling_ratio), aligned=bool(aligned),
                canonical_scale=float(canonical_scale), canonical_level=int(canonical_level), counts=view(counts),
            )
            view(outputs[0]).copy_(pooled)

    def _roi_align_aot(boxes, features, output_size, spatial_scales, sampling_ratio, aligned, canonical_scale,
                       canonical_level):
        # The graph is static: every extent is a build-time constant.
        batch, rois = _constant(boxes.shape_expr[0]), _constant(boxes.shape_expr[1])
        channels = _constant(features[0].shape_expr[1])
        sizes = [(_constant(f.shape_expr[2]), _constant(f.shape_expr[3])) for f in features]
        grid, block, shared, extra_ints = aot_launch(batch, rois, channels, sizes, int(output_size), int(sampling_ratio))
        defines = aot_defines(
            [float(s) for s in spatial_scales], int(output_size), int(sampling_ratio), bool(aligned),
            float(canonical_scale), int(canonical_level),
        )
        half = features[0].dtype == trt.float16
        ptx = compile_aot_ptx(len(features), half, _device_arch(), tuple(sorted(defines.items())))
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y = grid
        launch.block_x = block
        launch.shared_mem = shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in extra_ints])
        return AOT_KERNEL, ptx, launch, extra

    scope = {"trtp": trtp, "npt": npt, "np": np, "Tuple": Tuple, "Union": Union, "_roi_align_desc": _roi_align_desc,
             "_roi_align_formats": _roi_align_formats, "_roi_align_run": _roi_align_run,
             "_roi_align_aot": _roi_align_aot}
    has_aot = hasattr(trtp, "aot_impl")
    for levels in PLUGIN_LEVELS:
        name = f"{NAMESPACE}::{roi_align_plugin_name(levels)}"
        callbacks = roi_align_callbacks(levels, scope)
        trtp.register(name)(callbacks["desc"])
        trtp.autotune(name)(callbacks["formats"])
        trtp.impl(name)(callbacks["run"])
        if has_aot:
            trtp.aot_impl(name)(callbacks["aot"])
    aot_available = has_aot

    @trtp.register(f"{NAMESPACE}::{NMS}")
    def nms_desc(
        boxes: trtp.TensorDesc, scores: trtp.TensorDesc, classes: trtp.TensorDesc, iou_threshold: float,
        score_threshold: float, max_outputs: int,
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
        b, k = boxes.shape_expr[0], int(max_outputs)
        return (
            trtp.from_shape_expr((b,), dtype=trt.int32),
            trtp.from_shape_expr((b, k), dtype=trt.int32),
            trtp.from_shape_expr((b, k, 4), dtype=trt.float32),
            trtp.from_shape_expr((b, k), dtype=trt.float32),
            trtp.from_shape_expr((b, k), dtype=trt.int32),
        )

    @trtp.autotune(f"{NAMESPACE}::{NMS}")
    def nms_formats(boxes, scores, classes, outputs):
        return [trtp.AutoTuneCombination("FP32, FP32, INT32, INT32, INT32, FP32, FP32, INT32", "LINEAR")]

    @trtp.impl(f"{NAMESPACE}::{NMS}")
    def nms_run(boxes, scores, classes, iou_threshold, score_threshold, max_outputs, outputs, stream) -> None:
        import torch

        from segstream.kernels import batched_nms

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            view = lambda t: torch.as_tensor(t, device="cuda")  # noqa: E731
            result = batched_nms(
                view(boxes), view(scores), view(classes), float(iou_threshold), float(score_threshold), int(max_outputs)
            )
            for out, value in zip(outputs, result):
                target = view(out)
                target.copy_(value.to(target.dtype))
