"""The deployable OpenVINO artifact: one directory a base install (no torch) runs with `--model DIR`.

    DIR/
      segstream-model.json     the sidecar (ArtifactSidecar, validated with pydantic when loaded)
      trunk.xml/.bin           images f32 [B,3,H,W] -> FPN maps f32 [B,H/s,W/s,C] (channels-last)
      rpn_head.xml/.bin        FPN maps -> objectness [B,A,h,w] per level, then deltas [B,4A,h,w] per level
      box_head.xml/.bin        pooled f32 [N,C,7,7] -> class logits [N,classes], box regression [N,4*classes]
      mask_head.xml/.bin       pooled f32 [N,C,14,14] -> mask logits [N,classes,28,28]
      anchors.npy              f32 [sum(A*h*w), 4] x1,y1,x2,y2 input pixels, level-major (torchvision's order)

`segstream export openvino` writes it (segstream/engines/openvino_export.py, needs the torch extra);
segstream/engines/openvino_runtime.py runs it. This module reads the sidecar only and imports
neither torch nor OpenVINO.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from segstream.engines.model_config import ModelConfig, ModelConfigError

#: What to install when OpenVINO does not import (shared with openvino_build, which needs torch).
INSTALL_HINT = "pip install openvino (a dependency of segstream: pip install -e . installs it)"
SIDECAR = "segstream-model.json"
FORMAT = "segstream-openvino"
FORMAT_VERSION = 1
PARTS = ("trunk", "rpn_head", "box_head", "mask_head")
ANCHORS = "anchors.npy"
#: The bundled models, shipped as artifacts inside the package.
BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED = {"shapes": BUNDLED_DIR / "shapes"}


class ArtifactError(RuntimeError):
    """An artifact directory is missing, incomplete or malformed; one line for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class PoolerSpec(_Strict):
    """One MultiScaleRoIAlign (torchvision semantics): level = floor(canonical_level +
    log2(sqrt(area) / canonical_scale) + 1e-6), clamped to the levels of `scales`."""

    output_size: int = Field(ge=1)
    sampling_ratio: int
    scales: list[float] = Field(min_length=1, max_length=5)
    levels: list[int] = Field(min_length=1, max_length=5, description="indices of the FPN maps pooled from")
    canonical_scale: float = 224.0
    canonical_level: int = 4


class RpnSpec(_Strict):
    anchors_per_level: list[int] = Field(min_length=1, description="A*h*w anchors of each level, in order")
    anchors_per_location: list[int] = Field(min_length=1)
    strides: list[int] = Field(min_length=1, description="input pixels per map pixel of each level")
    pre_nms_top_n: list[int] = Field(min_length=1, description="proposals kept per level before NMS")
    post_nms_top_n: int = Field(ge=1, description="R, the proposals kept after NMS")
    nms_threshold: float = Field(ge=0, le=1)
    score_threshold: float = Field(ge=0, le=1)
    min_size: float = Field(ge=0)
    box_coder_weights: tuple[float, float, float, float]
    bbox_xform_clip: float


class RoiSpec(_Strict):
    box_pool: PoolerSpec
    mask_pool: PoolerSpec
    box_coder_weights: tuple[float, float, float, float]
    bbox_xform_clip: float
    score_threshold: float = Field(ge=0, le=1)
    nms_threshold: float = Field(ge=0, le=1)
    detections_per_image: int = Field(ge=1)


class ArtifactSidecar(_Strict):
    """Everything the torch-free runtime needs besides the compiled parts."""

    format: Literal["segstream-openvino"]
    format_version: Literal[1]
    name: str
    model_config_: dict = Field(alias="model_config", description="ModelConfig: classes, input size, mean/std, thresholds")
    input_layout: Literal["NCHW"] = "NCHW"
    input_color: Literal["RGB"] = "RGB"
    batch: int = Field(ge=1)
    precision: Literal["fp32", "bf16", "int8"]
    weights: Literal["fp32", "int8"]
    rpn: RpnSpec
    roi: RoiSpec
    parts: dict[str, str] = Field(description="part -> sha256 (16 hex) of its .xml and .bin")
    anchors_sha256: str
    checkpoint_digest: str = Field(description="segstream.engines.artifacts.model_digest of the model exported")
    source: str
    segstream_version: str
    openvino_version: str
    calibration: str | None = None

    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(dict(self.model_config_))


def file_digest(*paths: Path) -> str:
    """sha256 (16 hex chars) over the bytes of `paths`, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def part_digest(folder: Path, part: str) -> str:
    return file_digest(folder / f"{part}.xml", folder / f"{part}.bin")


def is_artifact(path: str | Path) -> bool:
    """True when `path` is a directory holding a sidecar (a name of a bundled model is not a path)."""
    p = Path(path)
    return p.is_dir() and (p / SIDECAR).is_file()


def bundled_artifact(name: str) -> Path | None:
    """The bundled artifact directory of model `name`, when the package ships one."""
    folder = BUNDLED.get(name)
    return folder if folder is not None and is_artifact(folder) else None


@dataclass
class Artifact:
    """A loaded, checked sidecar and where its files are."""

    folder: Path
    sidecar: ArtifactSidecar
    config: ModelConfig

    def part(self, name: str) -> Path:
        return self.folder / f"{name}.xml"


def load_artifact(folder: str | Path, verify: bool = False) -> Artifact:
    """Read and validate `folder`'s sidecar and check every file it names is there.

    verify: also recompute the digests of the parts and anchors (reads every byte; a test's job, or a
    deployment check: a start only checks the files exist).
    Raises ArtifactError naming the first problem.
    """
    folder = Path(folder)
    sidecar_path = folder / SIDECAR
    if not folder.is_dir():
        raise ArtifactError(f"model artifact {folder}: not a directory")
    if not sidecar_path.is_file():
        raise ArtifactError(f"model artifact {folder}: no {SIDECAR} (make one with `segstream export openvino`)")
    try:
        raw = json.loads(sidecar_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"model artifact {sidecar_path}: not valid JSON ({exc})") from None
    if isinstance(raw, dict) and raw.get("format") == FORMAT and raw.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"model artifact {folder}: format version {raw.get('format_version')!r}; this segstream reads "
                            f"{FORMAT_VERSION} (export it again with this version)")
    try:
        sidecar = ArtifactSidecar.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "sidecar"
        raise ArtifactError(f"model artifact {sidecar_path}: {where}: {first['msg']}") from None
    try:
        config = sidecar.config()
    except ModelConfigError as exc:
        raise ArtifactError(f"model artifact {sidecar_path}: model_config: {exc}") from None
    missing = sorted(set(PARTS) - set(sidecar.parts))
    if missing:
        raise ArtifactError(f"model artifact {sidecar_path}: parts: {missing[0]} is not listed")
    levels = len(sidecar.rpn.anchors_per_level)
    if not (len(sidecar.rpn.pre_nms_top_n) == len(sidecar.rpn.strides) == len(sidecar.rpn.anchors_per_location) == levels):
        raise ArtifactError(f"model artifact {sidecar_path}: rpn: per-level lists differ in length")
    for name in (*(f"{p}.xml" for p in PARTS), *(f"{p}.bin" for p in PARTS), ANCHORS):
        if not (folder / name).is_file():
            raise ArtifactError(f"model artifact {folder}: {name} is missing (export it again)")
    if verify:
        for part in PARTS:
            if part_digest(folder, part) != sidecar.parts[part]:
                raise ArtifactError(f"model artifact {folder}: {part} does not match its digest in {SIDECAR}")
        if file_digest(folder / ANCHORS) != sidecar.anchors_sha256:
            raise ArtifactError(f"model artifact {folder}: {ANCHORS} does not match its digest in {SIDECAR}")
    return Artifact(folder, sidecar, config)
