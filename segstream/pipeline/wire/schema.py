"""Redis wire schema v1 as validated models: what a consumer may trust after `parse_entry` said yes.

Entries of a result stream (`<prefix><stream-id>`, field `data`: one JSON object), told apart by
their keys (design.md §3):

    FrameEntry        has `frame` (and must have `instances`)
    EndOfStreamEntry  has `eos`
    StatusEntry       has `status`                          (live streams)
    UnknownEntry      none of these: a kind added by a newer producer; consumers skip it

and the fleet's records (segstream/fleet/keys.py): `JobEntry` (the jobs stream's entry, field `job`),
`JobRecord` (the job hash; Redis keeps every value as a string) and `CameraRecord` (the JSON value
of the wanted-cameras hash) and `WorkerRecord` (a worker's heartbeat hash).

Every model allows keys it does not know (fields may be added within schema 1) and checks types
strictly: no "3" for 3, no true for 1, no NaN. A mask's `counts` must add up to height x width of
its `size`, which must be the frame's [height, width] and at most `max_mask_pixels` pixels; both are
checked from the counts string alone, without allocating the mask. `python -m segstream.pipeline.wire.entries
--schema` prints the JSON Schema (docs/wire-schema-v1.json); the counts rule is stated in its
descriptions, as JSON Schema cannot express it. torch-free: consumers import this.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic.json_schema import models_json_schema

# An id as the service, `segstream run` and the fleet accept it: the one rule, in wire/stream_id.py.
from segstream.pipeline.wire.stream_id import ID_PATTERN

SCHEMA = 1
#: Largest mask `decode_mask` and the validators accept (pixels): 8192 x 8192, 64 MiB as uint8.
MAX_MASK_PIXELS = 8192 * 8192
ENTRY_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"
_STRICT = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class MalformedEntry(ValueError):
    """An entry that does not validate against schema v1; str() says why in one short line."""


class MaskError(ValueError):
    """A mask whose `size` is above the bound or whose `counts` do not describe `size` pixels."""


# -- masks ---------------------------------------------------------------------------------------

def mask_runs(counts: str, height: int, width: int, max_pixels: int = MAX_MASK_PIXELS) -> np.ndarray:
    """The runs (int64 [n], column-major, zeros first) of a COCO compressed-RLE `counts` string.

    Raises MaskError when height x width is negative or above `max_pixels`, when the string is not
    COCO's alphabet, ends inside a number, gives a negative run, or its runs do not add up to
    height x width. Cost and memory are those of the string, never of the mask.
    """
    if height < 0 or width < 0:
        raise MaskError(f"mask size [{height}, {width}] is negative")
    pixels = height * width
    if pixels > max_pixels:
        raise MaskError(f"mask size [{height}, {width}] is {pixels} pixels, above the bound of {max_pixels}")
    if not counts.isascii():
        raise MaskError("mask counts are not COCO compressed RLE (characters outside '0'..'o')")
    codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        runs = np.zeros(0, dtype=np.int64)
    else:
        if ((codes < 0) | (codes > 63)).any():
            raise MaskError("mask counts are not COCO compressed RLE (characters outside '0'..'o')")
        more = (codes & 0x20) != 0
        if more[-1]:
            raise MaskError("mask counts end inside a number")
        ends = np.flatnonzero(~more)  # last character of each number
        starts = np.concatenate(([0], ends[:-1] + 1))
        lengths = ends - starts + 1
        if lengths.max() > 8:  # 40 bits: far above any bound; keeps the sums below exact in float64
            raise MaskError("mask counts hold a number too large for a mask")
        group = np.repeat(np.arange(ends.size), lengths)
        shift = 5 * (np.arange(codes.size) - starts[group])
        values = np.bincount(group, weights=((codes & 0x1F) << shift).astype(np.float64)).astype(np.int64)
        negative = (codes[ends] & 0x10) != 0
        values[negative] -= np.left_shift(1, 5 * lengths[negative])
        # COCO stores run i > 2 as the difference to run i - 2.
        runs = values.copy()
        runs[1::2] = np.cumsum(values[1::2])
        runs[2::2] = np.cumsum(values[2::2])
        if (runs < 0).any():
            raise MaskError("mask counts give a negative run length")
    total = int(runs.sum())
    if total != pixels:
        raise MaskError(f"mask counts add up to {total} pixels, not {height} x {width} = {pixels}")
    return runs


def _bound(info: ValidationInfo) -> int:
    context = info.context or {}
    return int(context.get("max_mask_pixels", MAX_MASK_PIXELS))


class Mask(BaseModel):
    """A full-frame binary mask as COCO compressed RLE, column-major."""

    model_config = _STRICT
    size: list[Annotated[int, Field(ge=0)]] = Field(min_length=2, max_length=2,
                            description="[height, width] of the frame, pixels; height x width <= 8192 x 8192")
    counts: str = Field(description="COCO compressed RLE string; its runs (zeros first, column-major) add up "
                                    "to height x width")

    @model_validator(mode="after")
    def _runs_fit(self, info: ValidationInfo) -> Mask:
        try:
            mask_runs(self.counts, self.size[0], self.size[1], _bound(info))
        except MaskError as exc:
            raise ValueError(str(exc)) from None
        return self


class Instance(BaseModel):
    """One detected object of a frame."""

    model_config = _STRICT
    class_id: int = Field(ge=0)
    label: str
    score: float = Field(ge=0, le=1)
    box: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2], frame pixels")
    mask: Mask
    track_id: int | None = Field(default=None, description="present when tracking is on")


class FrameEntry(BaseModel):
    """One frame's result."""

    model_config = _STRICT
    schema_: Literal[1] = Field(alias="schema")
    stream: str = Field(min_length=1)
    frame: int = Field(ge=0, description="0-based index of the decoded frame in its source")
    pts: float | None = Field(description="seconds, or null")
    time: float = Field(description="unix seconds at capture/decode")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    dropped: int = Field(default=0, ge=0, description="live: frames dropped since the previous published frame")
    latency: float | None = Field(default=None, description="seconds from capture to publish")
    instances: list[Instance]
    error: str | None = Field(default=None, description="why the engine failed on this frame (no instances)")
    inferred: bool | None = Field(default=None, description="false when the instances were carried over from an "
                                                            "earlier inferred frame (motion gating)")
    inferred_frame: int | None = Field(default=None, ge=0, description="the frame the instances were inferred on")

    @model_validator(mode="after")
    def _masks_are_full_frame(self) -> FrameEntry:
        for i, inst in enumerate(self.instances):
            if inst.mask.size != [self.height, self.width]:
                raise ValueError(f"instance {i}: mask size {inst.mask.size} is not the frame's "
                                 f"[{self.height}, {self.width}]")
        return self


class EndOfStreamEntry(BaseModel):
    """The last entry of a file source."""

    model_config = _STRICT
    schema_: Literal[1] = Field(alias="schema")
    stream: str = Field(min_length=1)
    eos: Literal[True]
    frames: int = Field(ge=0, description="frames decoded")
    interrupted: bool | None = Field(default=None, description="true when the run stopped before the file's end")
    error: str | None = Field(default=None, description="why the file ended early, e.g. truncated after N frames")


class StatusEntry(BaseModel):
    """A live stream's state change."""

    model_config = _STRICT
    schema_: Literal[1] = Field(alias="schema")
    stream: str = Field(min_length=1)
    status: Literal["connecting", "live", "reconnecting", "down", "ended"]
    since: float = Field(description="unix seconds")
    reconnects: int = Field(ge=0)
    url: str | None = Field(default=None, description="the source, secrets shown as ***")
    error: str | None = None


class UnknownEntry(BaseModel):
    """An entry of a kind this version does not know (none of frame, eos, status): skip it."""

    model_config = _STRICT
    schema_: Literal[1] = Field(alias="schema")
    stream: str = Field(min_length=1)


class JobEntry(BaseModel):
    """The fields of one entry of the jobs stream `<prefix>fleet:jobs`."""

    model_config = _STRICT
    job: str = Field(pattern=ID_PATTERN, description="the job's id: its record is <prefix>fleet:job:<job>")


_NUMBER = r"^-?[0-9]{1,18}$"
_SECONDS = r"^[0-9]{1,12}(\.[0-9]{0,20})?([eE][+-]?[0-9]{1,3})?$"


class JobRecord(BaseModel):
    """The hash `<prefix>fleet:job:<job>` (Redis keeps every value as a string)."""

    model_config = _STRICT
    id: str | None = Field(default=None, pattern=ID_PATTERN)
    source: str = Field(min_length=1, max_length=8192, description="the video file or URL")
    stream_id: str = Field(pattern=ID_PATTERN, description="results go to <prefix><stream_id>")
    state: Literal["waiting", "running", "done", "failed"] = "waiting"
    attempts: str = Field(default="0", pattern=_NUMBER)
    base: str = Field(default="0-0", pattern=ENTRY_ID_PATTERN,
                      description="newest result entry at submit time: a resume reads only what comes after")
    submitted: str | None = Field(default=None, pattern=_SECONDS)
    started: str | None = Field(default=None, pattern=_SECONDS)
    finished: str | None = Field(default=None, pattern=_SECONDS)
    worker: str = ""
    token: str | None = Field(default=None, pattern=_NUMBER)
    frames: str | None = Field(default=None, pattern=_NUMBER)
    reason: str = ""


_REAL = r"^-?[0-9]{1,15}(\.[0-9]{0,20})?([eE][+-]?[0-9]{1,3})?$"


class WorkerRecord(BaseModel):
    """The heartbeat hash `<prefix>fleet:worker:<name>` (string values) as other workers and
    `segstream status` read it; `streams` is a JSON list of objects with a string `id`."""

    model_config = _STRICT
    name: str | None = None
    capacity: str = Field(pattern=r"^[0-9]{1,6}$")
    load: str = Field(pattern=r"^[0-9]{1,6}$")
    jobs: str = Field(pattern=r"^[0-9]{1,6}$")
    cameras: str = Field(pattern=r"^[0-9]{1,6}$")
    fps: str = Field(pattern=_REAL)
    jobs_done: str = Field(default="0", pattern=r"^[0-9]{1,18}$")
    jobs_failed: str = Field(default="0", pattern=r"^[0-9]{1,18}$")
    stopping: str = Field(default="0", pattern=r"^-?[0-9]{1,6}$")
    redis_up: str = Field(default="1", pattern=r"^-?[0-9]{1,6}$")
    streams: str = Field(default="[]", description="JSON list of {id, kind, state, fps, published, lag, dropped}")

    @model_validator(mode="after")
    def _streams_are_a_list(self) -> WorkerRecord:
        try:
            streams = json.loads(self.streams)
        except (ValueError, RecursionError):
            raise ValueError("streams is not JSON") from None
        if not isinstance(streams, list) or not all(isinstance(s, dict) and isinstance(s.get("id"), str)
                                                    for s in streams):
            raise ValueError("streams is not a list of objects with a string id")
        return self


class CameraRecord(BaseModel):
    """The JSON value of one field (the camera id) of the hash `<prefix>fleet:cameras`."""

    model_config = _STRICT
    url: str = Field(min_length=1, max_length=8192)


RESULT_MODELS: tuple[type[BaseModel], ...] = (FrameEntry, EndOfStreamEntry, StatusEntry, UnknownEntry)
FLEET_MODELS: tuple[type[BaseModel], ...] = (JobEntry, JobRecord, CameraRecord, WorkerRecord)

EntryKind = Literal["frame", "eos", "status", "unknown"]


# -- validation ----------------------------------------------------------------------------------

def why(error: ValidationError) -> str:
    """One short line naming the first failing field (never echoing the value)."""
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "entry"
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"[:300]


def message_kind(message: Mapping[str, Any]) -> EntryKind:
    """Which model a decoded object is checked against: by its keys, as `entry_kind` tells them."""
    if "eos" in message:
        return "eos"
    if "status" in message:
        return "status"
    if "frame" in message or "instances" in message:
        return "frame"
    return "unknown"


_BY_KIND: dict[str, type[BaseModel]] = {"frame": FrameEntry, "eos": EndOfStreamEntry, "status": StatusEntry,
                                        "unknown": UnknownEntry}


def validate_message(message: Any, max_mask_pixels: int = MAX_MASK_PIXELS) -> dict[str, Any]:
    """`message` itself (the decoded `data` object) when it is a valid schema-v1 entry of any kind.

    Raises MalformedEntry (one line: the field and why) otherwise.
    """
    if not isinstance(message, dict):
        raise MalformedEntry(f"data is not a JSON object (a {type(message).__name__})")
    kind = message_kind(message)
    try:
        _BY_KIND[kind].model_validate(message, context={"max_mask_pixels": max_mask_pixels})
    except ValidationError as exc:
        raise MalformedEntry(f"{kind} entry: {why(exc)}") from None
    return message


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse_entry(fields: Mapping[Any, Any] | None, max_mask_pixels: int = MAX_MASK_PIXELS) -> dict[str, Any]:
    """The validated `data` object of one result-stream entry's fields (bytes or str keys/values).

    Raises MalformedEntry when `data` is missing, is not JSON (or too deeply nested to read), or does
    not validate.
    """
    fields = fields or {}
    raw = fields.get(b"data", fields.get("data"))
    if raw is None:
        names = ", ".join(sorted(_text(k) for k in fields))[:200]
        raise MalformedEntry(f"no data field; fields: {names}")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedEntry("data is not JSON") from None
    return validate_message(message, max_mask_pixels)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of every model here, as docs/wire-schema-v1.json holds it."""
    _, document = models_json_schema([(m, "validation") for m in RESULT_MODELS + FLEET_MODELS],
                                     title="segstream Redis wire schema v1")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["description"] = (
        "Result-stream entries (field `data` of each entry of <prefix><stream-id>): an object with `frame` is a "
        "FrameEntry, with `eos` an EndOfStreamEntry, with `status` a StatusEntry, with none of them an "
        "UnknownEntry (skip it). Fleet: JobEntry (jobs stream fields), JobRecord (job hash, string values), "
        "CameraRecord (cameras hash values), WorkerRecord (worker heartbeat hash, string values). Unknown keys are allowed everywhere. Beyond JSON Schema: a mask's "
        "counts add up to height x width of its size, which equals the frame's [height, width].")
    # A result entry's kind follows from its keys (message_kind), so the document dispatches the same way.
    ref = {m: {"$ref": f"#/$defs/{m.__name__}"} for m in RESULT_MODELS}
    document.update({"if": {"required": ["eos"]}, "then": ref[EndOfStreamEntry], "else": {
        "if": {"required": ["status"]}, "then": ref[StatusEntry], "else": {
            "if": {"anyOf": [{"required": ["frame"]}, {"required": ["instances"]}]}, "then": ref[FrameEntry],
            "else": ref[UnknownEntry]}}})
    return document


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
