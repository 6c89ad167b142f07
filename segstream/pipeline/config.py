"""Run configuration: YAML files in configs/, validated at load, overridden by CLI flags.

Every error names the offending key (e.g. "engine.batch_size: must be >= 1") in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str = "shapes"
    weights: str | None = None
    input_size: tuple[int, int] | None = None
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    allow_download: bool = True

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and any(v <= 0 or v % 32 for v in value):
            raise ValueError("needs two positive multiples of 32 (height, width)")
        return value


class EngineSection(_Section):
    kind: Literal["auto", "torch", "onnxruntime", "openvino", "tensorrt"] = "auto"
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(default=1, ge=1, le=64)
    onnx: str | None = None
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    threads: int | None = Field(default=None, ge=1)


class SourceSection(_Section):
    open_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=10.0, gt=0)
    reconnect_window: float = Field(default=60.0, ge=0)
    max_frames: int | None = Field(default=None, ge=1)
    decoder_threads: int | None = Field(default=None, ge=0)  # None: 1 with a CPU engine, else FFmpeg's choice


class QueueSection(_Section):
    file_frames: int = Field(default=8, ge=1)
    live_frames: int = Field(default=2, ge=1)
    batches: int = Field(default=2, ge=1)
    results: int = Field(default=8, ge=1)


class RedisSection(_Section):
    url: str | None = "redis://localhost:6379/0"
    prefix: str = "segstream:"
    maxlen: int = Field(default=10000, ge=1)
    pubsub: bool = False

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class OutputSection(_Section):
    video: str | None = None
    video_fps: float = Field(default=30.0, gt=0)
    console: bool = False
    progress: bool = True
    status_interval: float = Field(default=5.0, gt=0)


class RunConfig(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    engine: EngineSection = Field(default_factory=EngineSection)
    source: SourceSection = Field(default_factory=SourceSection)
    queues: QueueSection = Field(default_factory=QueueSection)
    redis: RedisSection = Field(default_factory=RedisSection)
    output: OutputSection = Field(default_factory=OutputSection)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    return f"{where}: {error['msg']}"


def parse_config(raw: dict[str, Any] | None, origin: str = "config") -> RunConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: must be a mapping of sections (model, engine, source, queues, redis, output)")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_first_error(exc)}") from None


def load_config(path: str | Path | None) -> RunConfig:
    """Read and validate a YAML config; None gives the defaults."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    return parse_config(raw, origin=str(path))


def override(config: RunConfig, dotted: str, value: Any) -> None:
    """Set `section.key` (validated), for CLI flags."""
    section, key = dotted.split(".")
    try:
        setattr(getattr(config, section), key, value)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"{dotted}: {error['msg']}") from None
