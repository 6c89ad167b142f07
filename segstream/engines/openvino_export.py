"""A model as a deployable artifact directory (needs the torch extra); the command is
`segstream export openvino` (segstream/commands/export.py):

    segstream export openvino --model shapes -o shapes-ov/
    segstream export openvino --model maskrcnn_resnet50_fpn --weights W.pth --precision int8 --calibration street/ -o coco-int8/

The directory (layout: segstream/engines/openvino_artifact.py) holds the four OpenVINO parts
converted from the very torch modules the torch engine runs (trunk, RPN head, box head, mask head;
fp32 weights saved without fp16 compression, or int8 after NNCF at export time), the anchors as
constants, and a sidecar with every other number the torch-free runtime needs (thresholds, top-n
counts, pooler scales, box coder weights, class names, mean/std) and the checkpoint's digest.

int8: the trunk, RPN head and mask head are quantized on calibration images passed in
(`calibration`: network inputs f32 [1,3,H,W], engines/calibration.py); the command reads them from
`--calibration DIR|VIDEO`, or renders shapes frames for the bundled shapes model (the engines take
them as data, they never import the shapes generator). The box head stays fp32 (a
small MLP; quantizing it gains nothing measurable and costs score fidelity).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import segstream
from segstream.engines.artifacts import model_digest
from segstream.engines.models import LoadedModel
from segstream.engines.openvino_artifact import (
    ANCHORS,
    FORMAT,
    FORMAT_VERSION,
    PARTS,
    SIDECAR,
    ArtifactSidecar,
    file_digest,
    is_artifact,
    part_digest,
)
from segstream.engines.openvino_build import _convert, build_parts, openvino_version, require_openvino
from segstream.engines.static_graph import StaticMaskRCNN, _Pooler

PRECISIONS = ("fp32", "bf16", "int8")


class BoxHead(nn.Module):
    """Box head and predictor: pooled [N,C,S,S] -> (class logits [N,classes], box regression [N,4*classes])."""

    def __init__(self, graph: StaticMaskRCNN) -> None:
        super().__init__()
        self.box_head = graph.box_head
        self.box_predictor = graph.box_predictor

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        return self.box_predictor(self.box_head(pooled))


def _pooler_spec(pooler: _Pooler) -> dict:
    return {"output_size": pooler.output_size, "sampling_ratio": pooler.sampling_ratio,
            "scales": [float(s) for s in pooler.scales], "levels": list(pooler.indices),
            "canonical_scale": pooler.canonical_scale, "canonical_level": pooler.canonical_level}


def sidecar_for(model: LoadedModel, graph: StaticMaskRCNN, name: str, batch: int, precision: str, ov) -> dict:
    """The sidecar's fields of `model` (all but the part and anchor digests)."""
    network, config = model.network, model.config
    height, _ = config.input_size
    with torch.no_grad():
        maps = list(graph.backbone(torch.zeros((1, 3, *config.input_size))).values())
    rpn_coder, box_coder = graph.rpn_coder, graph.box_coder
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
        "model_config": json.loads(config.to_json()),
        "input_layout": "NCHW", "input_color": "RGB", "batch": batch, "precision": precision,
        "weights": "int8" if precision == "int8" else "fp32",
        "rpn": {
            "anchors_per_level": list(graph.anchors_per_level),
            "anchors_per_location": list(network.rpn.anchor_generator.num_anchors_per_location()),
            "strides": [height // int(m.shape[-2]) for m in maps],
            "pre_nms_top_n": list(graph.pre_nms_top_n), "post_nms_top_n": graph.num_proposals,
            "nms_threshold": graph.rpn_nms, "score_threshold": graph.rpn_score_threshold, "min_size": graph.rpn_min_size,
            "box_coder_weights": [float(w) for w in rpn_coder.weights], "bbox_xform_clip": float(rpn_coder.bbox_xform_clip),
        },
        "roi": {
            "box_pool": _pooler_spec(graph.box_pool), "mask_pool": _pooler_spec(graph.mask_pool),
            "box_coder_weights": [float(w) for w in box_coder.weights], "bbox_xform_clip": float(box_coder.bbox_xform_clip),
            "score_threshold": graph.score_threshold, "nms_threshold": graph.nms_threshold,
            "detections_per_image": graph.max_detections,
        },
        # The checkpoint's file name, not where it lay on the exporting machine.
        "checkpoint_digest": model_digest(model),
        "source": Path(model.source).name if Path(model.source).is_file() else model.source,
        "segstream_version": segstream.__version__, "openvino_version": openvino_version(ov),
    }


def export_artifact(
    model: LoadedModel, folder: str | Path, name: str, precision: str = "fp32", batch: int = 1,
    calibration: list[Tensor] | None = None, calibration_note: str | None = None,
) -> Path:
    """Write `model` as an artifact directory at `folder` (replacing an artifact already there).

    precision: fp32 | bf16 (fp32 weights, bf16 arithmetic where the CPU has it) | int8 (NNCF, needs
    `calibration`: images f32 [1,3,H,W] normalised and padded as the pipeline feeds them).
    The directory is written under a temporary name next to `folder` and renamed into place.
    """
    ov = require_openvino()
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if batch < 1:
        raise ValueError(f"--batch: {batch} must be >= 1")
    if precision == "int8" and not calibration:
        raise ValueError("--precision int8 needs calibration images")
    folder = Path(folder)
    if folder.exists() and not is_artifact(folder) and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} exists and is not a model artifact: choose an empty or new directory")
    network = model.network.to("cpu").eval()
    graph = StaticMaskRCNN(network, model.config).eval()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build_parts(model, batch, "int8" if precision == "int8" else "fp32", tmp, ov, calibration=calibration)
        pooled = torch.zeros((graph.num_proposals, network.backbone.out_channels, graph.box_pool.output_size,
                              graph.box_pool.output_size))
        box_head = _convert(ov, BoxHead(graph), pooled, dynamic_rows=True)
        ov.save_model(box_head, str(tmp / "box_head.xml"), compress_to_fp16=False)
        anchors = torch.cat([graph._anchors(level) for level in range(len(graph.anchors_per_level))]).numpy()
        np.save(tmp / ANCHORS, np.ascontiguousarray(anchors, np.float32), allow_pickle=False)
        sidecar = sidecar_for(model, graph, name, batch, precision, ov)
        sidecar["parts"] = {part: part_digest(tmp, part) for part in PARTS}
        sidecar["anchors_sha256"] = file_digest(tmp / ANCHORS)
        sidecar["calibration"] = calibration_note if precision == "int8" else None
        ArtifactSidecar.model_validate(sidecar)  # what the runtime will accept, checked before it is written
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
