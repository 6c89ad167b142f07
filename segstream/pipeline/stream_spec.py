"""What a stream is (`StreamSpec`: what `POST /streams`, a config's `streams:` entry, a fleet job or
camera becomes) and the source opened for it (`make_source`: a file, a camera, or a file decoded
with NVDEC), once the source policy (pipeline/sources/policy.py) admitted its location.

    StreamSpec --make_source--> VideoFileSource | CameraSource | NvdecFileSource --> StreamingPipeline.add_source
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from segstream.pipeline.config import RunConfig
from segstream.pipeline.sources.camera import CameraSource, Supervision
from segstream.pipeline.sources.device_frames import decode_backend
from segstream.pipeline.sources.file import VideoFileSource
from segstream.pipeline.sources.locations import source_kind
from segstream.pipeline.sources.policy import Origin, check_source
from segstream.pipeline.streams import SourceError
from segstream.pipeline.wire.stream_id import ID_PATTERN, stream_id_problem

if TYPE_CHECKING:  # imported where used: the GPU decoder needs torch
    from segstream.pipeline.sources.nvdec import NvdecFileSource

log = logging.getLogger(__name__)

Source = Union[VideoFileSource, "NvdecFileSource", CameraSource]


class StreamSpec(BaseModel):
    """One stream to add: what `POST /streams` takes. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)  # the pattern for the JSON Schema; _id_rule checks it
    url: str = Field(min_length=1)
    kind: Literal["auto", "file", "live"] = "auto"
    max_frames: int | None = Field(default=None, ge=1)
    start_frame: int | None = Field(default=None, ge=0)  # resume: first frame number to publish
    gating: Literal["auto", "on", "off"] | None = None  # motion gating for this stream (None: config's gating.mode)
    # A stream taken over (a fleet job resumed, a camera moved): its new tracks get ids from here
    # on, after those already published (None: from 1). Track ids are never reused in a stream.
    first_track_id: int | None = Field(default=None, ge=1)

    @field_validator("id", mode="before")
    @classmethod
    def _id_rule(cls, value: Any) -> Any:
        # Before the pattern: one message naming the rule, the same as every other way in.
        problem = stream_id_problem(value)
        if problem is not None:
            raise PydanticCustomError("stream_id", "{problem}", {"problem": problem})
        return value


class StreamExists(Exception):
    """A stream with this id is already running."""


class UnknownStream(KeyError):
    """No stream with this id."""


def make_source(spec: StreamSpec, config: RunConfig, origin: Origin = "trusted") -> Source:
    """A file or camera source for `spec` (kind from the URL unless the spec says), once the source
    policy (`sources`, pipeline/sources/policy.py) admitted its URL: raises SourceRefused otherwise,
    before anything is opened. origin "api": what arrived over HTTP (local files only under
    `sources.media_root`). A local file with a CUDA engine is decoded with NVDEC when usable
    (`source.decoder`, pipeline/sources/nvdec.py). The source carries where the stream resumes:
    `start_frame` (its first frame number) and `first_track_id` (its first new track id)."""
    source = _open(spec, config, origin)
    source.first_track_id = spec.first_track_id
    return source


def _open(spec: StreamSpec, config: RunConfig, origin: Origin) -> Source:
    admitted = check_source(spec.url, config.sources, origin)
    location = admitted.location
    src = config.source
    threads = src.decoder_threads
    if threads is None:  # a CPU engine owns the cores; decoder threads would only contend with it
        threads = 1 if config.engine.device == "cpu" else 0
    max_frames = spec.max_frames or src.max_frames
    if source_kind(location, None if spec.kind == "auto" else spec.kind) == "live":
        supervision = Supervision(src.open_timeout, src.stall_timeout, src.backoff_initial, src.backoff_max,
                                  src.give_up_after)
        return CameraSource(location, spec.id, supervision, max_frames, threads, start_frame=spec.start_frame)
    if config.engine.device == "cuda" and src.decoder != "cpu" and admitted.local:
        backend = decode_backend("cuda", src.decoder)
        if backend.name == "nvdec":
            from segstream.pipeline.sources.nvdec import NvdecFileSource

            return NvdecFileSource(location, spec.id, "cuda", max_frames, start_frame=spec.start_frame)
        if src.decoder == "nvdec":
            raise SourceError(f"source.decoder is nvdec, but {backend.reason.split(':')[0]}")
        log.info("%s: decoded on the CPU (%s)", spec.id, backend.reason)
    return VideoFileSource(location, spec.id, max_frames, threads, read_timeout=src.read_timeout,
                           start_frame=spec.start_frame)
