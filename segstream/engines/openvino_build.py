"""Converting the model's dense parts to OpenVINO, quantizing them, and the on-disk cache.

The OpenVINO engine (segstream/engines/openvino_engine.py) runs three converted parts:

    trunk:      images f32 [B,3,H,W] -> 4 FPN maps f32 [B,H/s,W/s,C] (channels-last, fixed shapes)
    rpn head:   4 FPN maps (channels-last) -> 4 RPN objectness maps, 4 RPN delta maps (NCHW, fixed shapes)
    mask head:  pooled f32 [N,C,14,14] -> mask logits f32 [N,classes,28,28] (N dynamic: the detections)

Both are `openvino.convert_model` of the very torch modules the torch engine runs (same weights),
saved as OpenVINO IR without weight compression. int8 runs NNCF's post-training quantization on
each part, calibrated on network inputs passed in (segstream/engines/calibration.py: frames of the
model's own domain, never made up here) and on the mask-head inputs the fp32 model pools from them.

Cache (what makes two builds the same is in the key):

    $SEGSTREAM_CACHE/openvino/<model digest>-<H>x<W>-b<B>-<weights>-ov<version>-<cpu>-v<build>/
        trunk.xml, rpn_head.xml, mask_head.xml (+ .bin)   the converted parts (<weights>: fp32, or
                                             int8-<calibration digest> after NNCF)
        compiled-<precision>/                OpenVINO's own cache of the compiled models

fp32 and bf16 share one conversion (bf16 is a compile-time hint), each with its compiled cache.
The model digest (segstream.engines.export.model_digest) covers weights, model config and graph
version; <cpu> names the CPU model and its OpenVINO capabilities. A folder is written under a
temporary name and renamed into place, so a reader never sees half a build. The cache keeps the
KEEP_BUILDS most recently used builds (a ResNet-50 Mask R-CNN build is ~180 MB; every retrained
or re-thresholded model is a new one); older ones are removed when a new build is added.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from segstream.engines.calibration import digest as calibration_digest
from segstream.engines.export import cache_root, model_digest
from segstream.engines.models import LoadedModel
from segstream.engines.openvino_artifact import INSTALL_HINT
from segstream.engines.static_graph import StaticMaskRCNN

PRECISIONS = ("fp32", "bf16", "int8")
INT8_HINT = "pip install nncf (int8 is quantized with NNCF on first use)"
#: Bump when the converted parts change for the same weights, so stale cached builds are not reused.
BUILD_VERSION = "4"
#: Builds kept in the cache; the least recently used beyond these are removed.
KEEP_BUILDS = 12
INT8_NEEDS_CALIBRATION = (
    "--precision int8 quantizes on calibration frames of the model's own domain: name them with "
    "--calibration DIR|VIDEO (a folder of images or a video), or export an int8 artifact once "
    "(segstream export openvino --precision int8 --calibration DIR|VIDEO -o OUT) and run --model OUT")


class OpenVinoUnavailable(RuntimeError):
    """OpenVINO (or NNCF for int8, or the CPU feature a precision needs) is missing; one line saying what to do."""


def require_openvino():
    """The `openvino` module; OpenVinoUnavailable naming what to install otherwise."""
    try:
        import openvino
    except ImportError:
        raise OpenVinoUnavailable(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def openvino_version(ov) -> str:
    """'2026.4.1' of OpenVINO's '2026.4.1-22982-e213a147257-releases/2026/4'."""
    return ov.get_version().split("-")[0]


def cpu_tag(core) -> str:
    """The CPU in a file name: its model name and a short hash over name and OpenVINO capabilities.

    Capabilities (BF16, INT8, ...) go in because two machines may report one generic model name
    ("Intel(R) Xeon(R) Processor" on a cloud VM) with different instruction sets.
    """
    name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    capabilities = ",".join(sorted(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name.replace("(R)", "").replace("(TM)", "")).strip("-")[:40]
    return f"{slug}-{hashlib.sha256(f'{name}|{capabilities}'.encode()).hexdigest()[:8]}"


def weights_precision(precision: str) -> str:
    """What the converted parts hold for an engine `precision`: int8 weights, or fp32 ones (fp32 and bf16)."""
    return "int8" if precision == "int8" else "fp32"


def build_dir(model: LoadedModel, batch: int, precision: str, ov, core, calibration: list[Tensor] | None = None) -> Path:
    """The cache folder of a build; int8 builds are told apart by their calibration set as well."""
    height, width = model.config.input_size
    weights = weights_precision(precision)
    if weights == "int8":
        if not calibration:
            raise OpenVinoUnavailable(INT8_NEEDS_CALIBRATION)
        weights = f"int8-{calibration_digest(calibration)}"
    return cache_root() / "openvino" / (
        f"{model_digest(model)}-{height}x{width}-b{batch}-{weights}-ov{openvino_version(ov)}"
        f"-{cpu_tag(core)}-v{BUILD_VERSION}"
    )


#: The converted parts, in the order they run.
PARTS = ("trunk", "rpn_head", "mask_head")


class Trunk(nn.Module):
    """Backbone+FPN: images -> (*features) (one map per FPN level)."""

    def __init__(self, graph: StaticMaskRCNN) -> None:
        super().__init__()
        self.backbone = graph.backbone

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.backbone(images).values())


class RpnHead(nn.Module):
    """The RPN head on the FPN maps: (*features) -> (*objectness, *deltas).

    A part of its own, not in the trunk: the engine runs the trunk and the rest on two threads one
    batch apart, and the RPN head's convolutions (a quarter of the trunk's work on the bundled model)
    even out the two halves (docs/engines.md, "Overlap").
    """

    def __init__(self, graph: StaticMaskRCNN) -> None:
        super().__init__()
        self.rpn_head = graph.rpn_head

    def forward(self, *features: Tensor) -> tuple[Tensor, ...]:
        objectness, deltas = self.rpn_head(list(features))
        return (*objectness, *deltas)


class MaskHead(nn.Module):
    """Mask head and predictor: pooled [N,C,S,S] -> logits [N,classes,2S,2S]."""

    def __init__(self, graph: StaticMaskRCNN) -> None:
        super().__init__()
        self.mask_head = graph.mask_head
        self.mask_predictor = graph.mask_predictor

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mask_predictor(self.mask_head(pooled))


def _convert(ov, module: nn.Module, example: Tensor | tuple[Tensor, ...], dynamic_rows: bool):
    """`module` as an OpenVINO model with the example's input shapes: static, or with a dynamic first
    dimension (dynamic_rows). convert_model leaves every dimension dynamic; static shapes compiled
    ~15 % faster on the trunk and RPN head (25.3 vs 29.8 ms, docs/engines.md)."""
    with warnings.catch_warnings(), torch.no_grad():
        # Tracing warns about constants it records (the static sizes are meant to be constants).
        warnings.simplefilter("ignore")
        converted = ov.convert_model(module.eval(), example_input=example)
    examples = example if isinstance(example, tuple) else (example,)
    converted.reshape({
        port: ov.PartialShape([-1 if dynamic_rows else t.shape[0], *t.shape[1:]])
        for port, t in zip(converted.inputs, examples)
    })
    return converted


def _maps_channels_last(ov, model, side: str):
    """`model` with its FPN maps (the trunk's outputs, or the RPN head's inputs) as [B, H, W, C] tensors.

    OpenVINO's convolutions keep their maps in a blocked layout and reorder them at the model's edge
    anyway; reordering to channels-last there costs the same, and the RoIAlign kernel reads
    channels-last maps several times faster (segstream/kernels/roi_align.py).
    """
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    for index in range(len(getattr(model, side))):
        edge = ppp.output(index) if side == "outputs" else ppp.input(index)
        edge.tensor().set_layout(ov.Layout("NHWC"))
        edge.model().set_layout(ov.Layout("NCHW"))
    return ppp.build()


def _head_inputs(graph: StaticMaskRCNN, trunk, rpn_head, images: list[Tensor]) -> tuple[list[list[np.ndarray]], list[Tensor]]:
    """What the RPN head and the mask head see on `images` at fp32: the FPN maps of each batch, and
    pooled f32 [N,C,S,S] per image with N >= 1.

    trunk, rpn_head: the compiled fp32 parts (OpenVINO runs them several times faster than torch does
    here, on whatever thread builds the engine); the proposals, box head and pooling are the engine's torch steps.
    """
    height, width = graph.config.input_size
    levels = len(graph.anchors_per_level)
    trunk_request, rpn_request = trunk.create_infer_request(), rpn_head.create_infer_request()
    maps_seen, pooled_seen = [], []
    with torch.no_grad():
        for image in images:
            sizes = torch.tensor([[height, width]] * image.shape[0], dtype=torch.int32)
            outputs = trunk_request.infer([image.numpy()], share_outputs=False)
            maps = [outputs[i] for i in range(levels)]
            maps_seen.append(maps)
            rpn = rpn_request.infer(maps)
            heads = [torch.from_numpy(rpn[i]) for i in range(2 * levels)]
            features = [torch.from_numpy(m) for m in maps]
            num_proposals, proposals = graph.select_proposals(heads[:levels], heads[levels:], sizes)
            num, boxes, _, _ = graph.detect(features, proposals, num_proposals, sizes)
            pooled = graph.mask_pool(features, boxes, num)
            for b, count in enumerate(num.tolist()):
                if count:
                    pooled_seen.append(pooled[b, :count].contiguous())
    return maps_seen, pooled_seen


def _quantize(ov_model, samples: list[np.ndarray]):
    # Importing NNCF imports torch's cpp_extension, which warns that there is no CUDA: not news on a CPU engine.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError:
        raise OpenVinoUnavailable(f"--precision int8 needs NNCF: {INT8_HINT}") from None
    # NNCF draws progress bars (rich, on stdout) and logs statistics: a run's output is not the place.
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(ov_model, nncf.Dataset(samples), subset_size=len(samples))


def build_parts(model: LoadedModel, batch: int, precision: str, folder: Path, ov,
                calibration: list[Tensor] | None = None) -> None:
    """Convert (and for int8 quantize) the trunk, RPN head and mask head of `model` into `folder` as IR files.

    calibration: int8 only (and required there), network inputs f32 [1,3,H,W] (normalised, padded)
    to calibrate on: engines/calibration.py makes them of frames the caller passes in.
    """
    network = model.network
    graph = StaticMaskRCNN(network, model.config).eval()
    height, width = model.config.input_size
    images = torch.zeros((batch, 3, height, width))
    with torch.no_grad():
        maps = tuple(graph.backbone(images).values())
    # The mask head's input: RoIAlign of the FPN maps, backbone.out_channels deep.
    pooled = torch.zeros((model.config.max_detections, network.backbone.out_channels, graph.mask_pool.output_size,
                          graph.mask_pool.output_size))
    trunk = _convert(ov, Trunk(graph), images, dynamic_rows=False)
    rpn_head = _convert(ov, RpnHead(graph), maps, dynamic_rows=False)
    mask_head = _convert(ov, MaskHead(graph), pooled, dynamic_rows=True)
    if precision == "int8":
        if not calibration:
            raise OpenVinoUnavailable(INT8_NEEDS_CALIBRATION)
        frames = calibration
        batches = [torch.cat(frames[i : i + batch]) for i in range(0, len(frames) - batch + 1, batch)]
        fp32 = {"INFERENCE_PRECISION_HINT": "f32"}
        maps_seen, pooled_seen = _head_inputs(graph, ov.Core().compile_model(trunk, "CPU", fp32),
                                              ov.Core().compile_model(rpn_head, "CPU", fp32), batches)
        trunk = _quantize(trunk, [b.numpy() for b in batches])
        rpn_head = _quantize(rpn_head, maps_seen)
        mask_head = _quantize(mask_head, [p.numpy() for p in pooled_seen])
    trunk, rpn_head = _maps_channels_last(ov, trunk, "outputs"), _maps_channels_last(ov, rpn_head, "inputs")
    # save_model compresses weights to fp16 by default; fp32 must stay bit-faithful to the torch weights.
    for name, part in zip(PARTS, (trunk, rpn_head, mask_head)):
        ov.save_model(part, str(folder / f"{name}.xml"), compress_to_fp16=False)


def cached_parts(model: LoadedModel, batch: int, precision: str, ov, core,
                 calibration: list[Tensor] | None = None) -> tuple[Path, bool]:
    """The cached build folder of `model` at `batch` and `precision`, built on first use; (folder, built now).

    calibration: network inputs f32 [1,3,H,W] for int8 (see build_parts); ignored otherwise.
    """
    folder = build_dir(model, batch, precision, ov, core, calibration)
    if all((folder / f"{name}.xml").is_file() for name in PARTS):
        os.utime(folder)  # used now: the last to be pruned
        return folder, False
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build_parts(model, batch, weights_precision(precision), tmp, ov, calibration=calibration)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same build first; theirs is as good
            if not (folder / "trunk.xml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune_builds(folder.parent, KEEP_BUILDS)
    return folder, True


def prune_builds(root: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used build folders under `root` (partial builds are left alone)."""
    builds = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for stale in builds[keep:]:
        shutil.rmtree(stale, ignore_errors=True)
