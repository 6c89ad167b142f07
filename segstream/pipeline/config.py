"""Run configuration: YAML files in configs/, validated at load, overridden by CLI flags.

Every error names the offending key (e.g. "engine.batch_size: must be >= 1") in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segstream.pipeline.sources.policy import DEFAULT_SCHEMES, PROTOCOLS


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


EngineKind = Literal["auto", "torch", "static", "onnxruntime", "openvino", "tensorrt"]
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)  # for CLI choices without importing the engines


class EngineSection(_Section):
    kind: EngineKind = "auto"
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(default=1, ge=1, le=64)
    onnx: str | None = None
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    threads: int | None = Field(default=None, ge=1)
    # openvino int8 with a torch model: frames of the model's own domain to quantize on (a folder of
    # images or a video file; engines/calibration.py). An int8 artifact (--model DIR) needs none.
    calibration: str | None = None
    max_batch_wait_ms: float = Field(default=5.0, ge=0)  # how long a batch waits to fill up
    max_consecutive_errors: int = Field(default=5, ge=1)  # failed batches in a row that stop the run
    # On a CPU, engines that split (torch, openvino) run their trunk and their heads on two threads,
    # one batch apart, so both cores work on the engine (docs/engines.md, "Overlap").
    overlap: bool = True


class SourceSection(_Section):
    open_timeout: float = Field(default=10.0, gt=0)  # seconds to connect to a camera
    read_timeout: float = Field(default=10.0, gt=0)  # files over http(s): seconds without data
    stall_timeout: float = Field(default=10.0, gt=0)  # cameras: seconds without a frame -> reconnect
    backoff_initial: float = Field(default=0.5, gt=0)  # first wait between camera attempts
    backoff_max: float = Field(default=5.0, gt=0)  # largest wait between camera attempts
    give_up_after: float | None = Field(default=None, gt=0)  # None: retry a camera for ever
    max_frames: int | None = Field(default=None, ge=1)
    decoder_threads: int | None = Field(default=None, ge=0)  # None: 1 with a CPU engine, else FFmpeg's choice
    # Local files with a CUDA engine: auto decodes with NVDEC when PyNvVideoCodec loads (else the CPU,
    # saying why), nvdec insists (an error when it cannot), cpu never tries. Cameras decode on the CPU.
    decoder: Literal["auto", "nvdec", "cpu"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "reconnect_window" in raw:
            raise ValueError("source.reconnect_window was replaced by source.give_up_after "
                             "(seconds, or null to retry a camera for ever, the default)")
        return raw


class SourcesSection(_Section):
    """Which sources may enter, from anywhere (pipeline/sources/policy.py, docs/security-sources.md)."""

    # URL schemes accepted; only network protocols can be named (never file, concat, pipe, ...).
    schemes: list[str] = Field(default_factory=lambda: list(DEFAULT_SCHEMES))
    # Local files through the HTTP API only under this folder (None: none at all); the CLI, config
    # files and fleet jobs may name any local file, or only files under it when it is set.
    media_root: str | None = None
    # Listening modes (tcp ?listen, srt listener, udp receiving on a unicast/any address).
    allow_listen: bool = False

    @field_validator("schemes")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        value = [s.lower().removesuffix("://") for s in value]
        unknown = [s for s in value if s not in PROTOCOLS]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} cannot be allowed; choose from {' '.join(PROTOCOLS)} "
                             "(local files are paths, restricted by sources.media_root)")
        return value

    @field_validator("media_root")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_absolute():
            raise ValueError("must be an absolute path")
        return None if value is None else str(Path(value).expanduser())


class QueueSection(_Section):
    file_frames: int = Field(default=8, ge=1)
    live_frames: int = Field(default=2, ge=1)
    batches: int = Field(default=2, ge=1)
    results: int = Field(default=8, ge=1)


class RedisSection(_Section):
    url: str | None = "redis://localhost:6379/0"
    prefix: str = "segstream:"
    maxlen: int = Field(default=10000, ge=1)  # XADD MAXLEN ~ per stream
    retention_seconds: float | None = Field(default=None, gt=0)  # also trim entries older than this (MINID ~)
    outbox: int = Field(default=1000, ge=1)  # camera results kept per stream while Redis is away
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=5.0, gt=0)
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


class FleetSection(_Section):
    """`segstream worker` (docs/scale-out.md): times in seconds."""

    lease: float = Field(default=10.0, gt=0)  # a silent worker's jobs and cameras move after this
    heartbeat: float = Field(default=2.0, gt=0)  # how often a worker renews its leases (< lease)
    max_attempts: int = Field(default=3, ge=1)  # claims of one job before it is failed for good
    capacity: int = Field(default=4, ge=1)  # streams (jobs + cameras) one worker runs at once
    keep_finished: float = Field(default=86400.0, gt=0)  # done/failed job records are kept this long
    group: str = "workers"  # the consumer group of the jobs stream

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> "FleetSection":
        if self.heartbeat >= self.lease:
            raise ValueError("heartbeat must be shorter than lease")
        return self


class ViewerSection(_Section):
    """`segstream serve`'s live viewer: a bounded cost, whatever the cameras do."""

    fps: float = Field(default=5.0, gt=0, le=30)  # most frames per second drawn per watched stream
    max_width: int = Field(default=640, ge=64, le=1920)  # frames are drawn at most this wide
    jpeg_quality: int = Field(default=75, ge=10, le=95)


class ServeSection(_Section):
    """The HTTP side of `serve`, `run --http` and `worker --http` (docs/security.md)."""

    # Host names accepted besides localhost/127.0.0.1/[::1] when no token is set (DNS rebinding
    # defence); "*.example.com" matches subdomains. With a token every Host is accepted.
    allowed_hosts: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)  # larger bodies: 413, unread
    max_json_depth: int = Field(default=32, ge=2, le=256)  # deeper JSON bodies: 400
    max_streams: int = Field(default=32, ge=1, le=4096)  # running streams (config, API, restored); past it: 409


class TrackingSection(_Section):
    """Track ids across frames (pipeline/stages/tracking.py); overlaps are 0..1 (box IoU averaged with mask IoU)."""

    enabled: bool = True
    min_hits: int = Field(default=2, ge=1)  # detections before a track is confirmed (it survives misses)
    max_age: float = Field(default=2.0, gt=0)  # seconds unseen (stream clock) before a track ends
    high_score: float = Field(default=0.5, ge=0.0, le=1.0)  # detections that may find lost tracks and confirm
    low_score: float = Field(default=0.1, ge=0.0, le=1.0)  # weaker ones may only continue a track seen last frame
    match_overlap: float = Field(default=0.2, ge=0.0, le=1.0)  # minimum overlap, strong detections
    low_match_overlap: float = Field(default=0.5, ge=0.0, le=1.0)  # minimum overlap, weak detections
    tentative_overlap: float = Field(default=0.3, ge=0.0, le=1.0)  # minimum overlap, tentative tracks
    mask_weight: float = Field(default=0.5, ge=0.0, le=1.0)  # share of mask IoU in the overlap
    cut_change: float = Field(default=0.1, gt=0.0, le=1.0)  # mean colour change of the frame at a scene cut
    cut_matched: float = Field(default=0.5, ge=0.0, le=1.0)  # ...with fewer than this share of tracks found

    @model_validator(mode="after")
    def _scores_ordered(self) -> "TrackingSection":
        if self.low_score > self.high_score:
            raise ValueError(f"low_score ({self.low_score}) must not exceed high_score ({self.high_score})")
        return self


class GatingSection(_Section):
    """Motion gating (pipeline/stages/gating.py): run the engine only when a stream's picture changed;
    the frames in between carry the last inferred instances over."""

    mode: Literal["auto", "on", "off"] = "auto"  # auto: on for cameras, off for files
    max_interval: float = Field(default=2.0, gt=0)  # seconds (stream clock) between inferences, at most
    noise_factor: float = Field(default=2.5, gt=0)  # a cell changed: change > noise_factor * its noise + min_change
    min_change: float = Field(default=3.0, ge=0)  # levels 0..255 (luma; twice that for colour)
    min_cells: int = Field(default=2, ge=1)  # changed cells (8 x 8 pixels of a 640 x 360 frame) that open the gate
    hold: float = Field(default=0.0, ge=0)  # seconds the gate stays open after a change


class RunConfig(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    engine: EngineSection = Field(default_factory=EngineSection)
    source: SourceSection = Field(default_factory=SourceSection)
    sources: SourcesSection = Field(default_factory=SourcesSection)
    queues: QueueSection = Field(default_factory=QueueSection)
    redis: RedisSection = Field(default_factory=RedisSection)
    output: OutputSection = Field(default_factory=OutputSection)
    fleet: FleetSection = Field(default_factory=FleetSection)
    shutdown_timeout: float = Field(default=10.0, gt=0)  # SIGINT/SIGTERM: seconds to drain before giving up
    viewer: ViewerSection = Field(default_factory=ViewerSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    # `segstream serve`: streams added at start, each {id, url, kind?, max_frames?}; validated by
    # the service against segstream.pipeline.stream_spec.StreamSpec (errors name streams.N.key).
    streams: list[dict[str, Any]] = Field(default_factory=list)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    gating: GatingSection = Field(default_factory=GatingSection)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def parse_config(raw: dict[str, Any] | None, origin: str = "config") -> RunConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: must be a mapping of sections (model, engine, source, queues, redis, output, tracking)")
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


def input_size_flag(text: str) -> tuple[int, int]:
    """--input-size HxW -> (H, W); one clear error otherwise (validated further by the config)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input-size: {text!r} is not HxW") from None
    return h, w


def override(config: RunConfig, dotted: str, value: Any) -> None:
    """Set `section.key` (validated), for CLI flags."""
    section, key = dotted.split(".")
    try:
        setattr(getattr(config, section), key, value)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"{dotted}: {error['msg']}") from None
