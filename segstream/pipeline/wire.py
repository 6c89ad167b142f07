"""Redis wire schema v1 (design.md §3): the JSON published per frame and at the end of a file.

    {"schema": 1, "stream": id, "frame": n, "pts": s|null, "time": unix s, "width": W, "height": H,
     "dropped": k, "instances": [{"class_id", "label", "score", "box": [x1,y1,x2,y2],
                                  "mask": {"size": [H, W], "counts": "<COCO compressed RLE>"},
                                  "track_id": n (when tracking is on)}]}
    {"schema": 1, "stream": id, "eos": true, "frames": N}
Fields may be added within schema 1; renaming or removing one needs schema 2.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from segstream.pipeline.messages import EndOfStream, FrameResult, Instance

SCHEMA = 1


def frame_message(result: FrameResult, dropped: int) -> dict[str, Any]:
    """The schema-v1 object for one frame; `dropped` = frames dropped since the previous one published."""
    frame = result.frame
    return {
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
    return message


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def decode_mask(mask: dict[str, Any]) -> np.ndarray:
    """uint8 [height, width] binary mask of an instance's "mask" field."""
    from pycocotools import mask as coco_mask

    rle = {"size": list(mask["size"]), "counts": mask["counts"].encode("ascii")}
    return coco_mask.decode(rle)


def _track_ids(instances: list[dict[str, Any]]) -> str:
    """" #3 #7" for instances with track ids, "" without."""
    ids = sorted(inst["track_id"] for inst in instances if inst.get("track_id") is not None)
    return "".join(f" #{i}" for i in ids)


def describe(message: dict[str, Any]) -> str:
    """One human line for a message (what `segstream subscribe` prints)."""
    if message.get("eos"):
        return f"{message['stream']} end of stream: {message['frames']} frames"
    by_label: dict[str, list[dict[str, Any]]] = {}
    for inst in message["instances"]:
        by_label.setdefault(inst["label"], []).append(inst)
    found = ", ".join(f"{len(insts)} {label}{_track_ids(insts)}" for label, insts in sorted(by_label.items())) or "nothing"
    pts = f" t={message['pts']:.2f}s" if message.get("pts") is not None else ""
    dropped = f" dropped={message['dropped']}" if message.get("dropped") else ""
    return f"{message['stream']} frame {message['frame']}{pts} {message['width']}x{message['height']}: {found}{dropped}"
