"""Redis wire schema v1 (design.md §3): the JSON published per frame and at the end of a file.

    {"schema": 1, "stream": id, "frame": n, "pts": s|null, "time": unix s, "width": W, "height": H,
     "dropped": k, "instances": [{"class_id", "label", "score", "box": [x1,y1,x2,y2],
                                  "mask": {"size": [H, W], "counts": "<COCO compressed RLE>"},
                                  "track_id": n (when tracking is on)}]}
    {"schema": 1, "stream": id, "eos": true, "frames": N}
    {"schema": 1, "stream": id, "status": "connecting|live|reconnecting|down|ended", "since": unix s,
     "reconnects": n, "url": redacted url, "error": why (when lost)}          (live streams only)
A frame the engine failed on carries "error": why, and no instances. A frame the engine skipped
(motion gating) carries "inferred": false and "inferred_frame": n, the frame its instances are from.
Fields may be added within schema 1; renaming or removing one needs schema 2.

The validated models of these entries (and of the fleet's records) are in segstream/pipeline/wire/schema.py;
`python -m segstream.pipeline.wire.entries --schema` prints their JSON Schema (docs/wire-schema-v1.json).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from segstream.pipeline.wire.schema import (  # noqa: F401  (the wire's public names)
    MAX_MASK_PIXELS, SCHEMA, MalformedEntry, MaskError, mask_runs, parse_entry, schema_text, validate_message)

if TYPE_CHECKING:  # consumers read the wire without torch: messages.py imports it
    from segstream.pipeline.messages import EndOfStream, FrameResult, Instance, StreamStatus



def frame_message(result: FrameResult, dropped: int) -> dict[str, Any]:
    """The schema-v1 object for one frame; `dropped` = frames dropped since the previous one published."""
    frame = result.frame
    message = {
        "schema": SCHEMA,
        "stream": frame.stream_id,
        "frame": frame.index,
        "pts": frame.pts,
        "time": round(frame.time, 6),
        "width": frame.width,
        "height": frame.height,
        "dropped": dropped,
        "latency": round(result.latency, 4),
        "instances": [_instance(inst) for inst in result.instances],
    }
    if result.error is not None:
        message["error"] = result.error
    if result.inferred_frame is not None:  # motion gating carried an earlier frame's instances over
        message["inferred"] = False
        message["inferred_frame"] = result.inferred_frame
    return message


def status_message(status: StreamStatus) -> dict[str, Any]:
    """The schema-v1 status entry of a live stream's state change."""
    message: dict[str, Any] = {"schema": SCHEMA, "stream": status.stream_id, "status": status.status,
                               "since": round(status.since, 3), "reconnects": status.reconnects, "url": status.url}
    if status.error:
        message["error"] = status.error
    return message


def _instance(inst: Instance) -> dict[str, Any]:
    out: dict[str, Any] = {
        "class_id": inst.class_id,
        "label": inst.label,
        "score": round(inst.score, 4),
        "box": [round(v, 2) for v in inst.box],
        "mask": inst.rle,
    }
    if inst.track_id is not None:  # tracking off: no key at all (never null)
        out["track_id"] = inst.track_id
    return out


def eos_message(eos: EndOfStream) -> dict[str, Any]:
    message: dict[str, Any] = {"schema": SCHEMA, "stream": eos.stream_id, "eos": True, "frames": eos.frames}
    if eos.interrupted:
        message["interrupted"] = True
    if eos.error:
        message["error"] = eos.error
    return message


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def decode_mask(mask: dict[str, Any], *, max_pixels: int = MAX_MASK_PIXELS) -> np.ndarray:
    """uint8 [height, width] binary mask (column-major memory, as pycocotools returns it) of an
    instance's "mask" field {"size": [height, width], "counts": COCO compressed RLE string}.

    Raises MaskError, before allocating anything of the mask's size, when height x width is above
    `max_pixels` (default MAX_MASK_PIXELS, 8192 x 8192) or the counts do not add up to it, and when
    the field is not of that shape.
    """
    if not isinstance(mask, dict):
        raise MaskError("a mask is an object {\"size\": [height, width], \"counts\": \"...\"}")
    size, counts = mask.get("size"), mask.get("counts")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise MaskError("mask size is not [height, width] (two integers)")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if not isinstance(counts, str):
        raise MaskError("mask counts are not a COCO compressed RLE string")
    height, width = size
    runs = mask_runs(counts, height, width, max_pixels)
    values = np.zeros(runs.size, dtype=np.uint8)
    values[1::2] = 1  # runs alternate, zeros first
    return np.repeat(values, runs).reshape(width, height).T


def _track_ids(instances: list[dict[str, Any]]) -> str:
    """" #3 #7" for instances with track ids, "" without."""
    ids = sorted(inst["track_id"] for inst in instances if isinstance(inst.get("track_id"), int))
    return "".join(f" #{i}" for i in ids)


EntryKind = Literal["frame", "eos", "status", "unknown"]


def entry_kind(message: dict[str, Any]) -> EntryKind:
    """What a stream entry is: "frame" (has `frame` + `instances`), "eos" (`eos`), "status" (`status`:
    {"schema": 1, "stream": id, "status": "connecting|live|reconnecting|down|ended", "since": unix s,
    "reconnects": N, optional "url" (password redacted) and "error"}, published on live streams), or
    "unknown" (anything else, e.g. a kind added by a newer producer: consumers skip it)."""
    if not isinstance(message, dict):
        return "unknown"
    if message.get("eos"):
        return "eos"
    if "status" in message:
        return "status"
    if "frame" in message and isinstance(message.get("instances"), list):
        return "frame"
    return "unknown"


def _describe_status(message: dict[str, Any]) -> str:
    line = f"{message.get('stream', '?')} status {message.get('status')}"
    since = message.get("since")
    if isinstance(since, (int, float)):
        line += f" since {time.strftime('%H:%M:%S', time.localtime(since))}"
    reconnects = message.get("reconnects")
    if isinstance(reconnects, int) and reconnects:
        line += f" ({reconnects} reconnect{'s' if reconnects != 1 else ''})"
    if message.get("url"):
        line += f" {message['url']}"
    if message.get("error"):
        line += f": {message['error']}"
    return line


def _describe_unknown(message: Any) -> str:
    if not isinstance(message, dict):
        return f"? unknown entry ({type(message).__name__})"
    detail = message.get("invalid") or "keys: " + ", ".join(sorted(str(k) for k in message))
    return f"{message.get('stream', '?')} unknown entry ({detail})"


def describe(message: dict[str, Any]) -> str:
    """One human line for a message (what `segstream subscribe` prints)."""
    kind = entry_kind(message)
    if kind == "status":
        return _describe_status(message)
    if kind == "unknown" or (kind == "frame" and not {"stream", "width", "height"} <= message.keys()):
        return _describe_unknown(message)
    if kind == "eos" and not {"stream", "frames"} <= message.keys():
        return f"{message.get('stream', '?')} end of stream"
    if message.get("eos"):
        return f"{message['stream']} end of stream: {message['frames']} frames"
    by_label: dict[str, list[dict[str, Any]]] = {}
    for inst in message["instances"]:
        by_label.setdefault(inst["label"], []).append(inst)
    found = ", ".join(f"{len(insts)} {label}{_track_ids(insts)}" for label, insts in sorted(by_label.items())) or "nothing"
    pts = f" t={message['pts']:.2f}s" if message.get("pts") is not None else ""
    dropped = f" dropped={message['dropped']}" if message.get("dropped") else ""
    carried = f" (as frame {message.get('inferred_frame')})" if message.get("inferred") is False else ""
    return (f"{message['stream']} frame {message['frame']}{pts} {message['width']}x{message['height']}: "
            f"{found}{carried}{dropped}")


def main(argv: list[str] | None = None) -> int:
    """`python -m segstream.pipeline.wire.entries --schema [FILE]`: print (or write) the wire's JSON Schema."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "--schema" or len(args) > 2:
        print("usage: python -m segstream.pipeline.wire.entries --schema [FILE]", file=sys.stderr)
        return 2
    if len(args) == 2:
        with open(args[1], "w", encoding="utf-8") as out:
            out.write(schema_text())
    else:
        sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
