"""How a FrameResult looks: its frame with masks blended in, boxes and labels drawn.

One drawing for everything that shows results to a person: the annotated video
(pipeline/sinks/annotated_video.py) and the service's live viewer (service/viewer.py), so an
object looks the same in both (same colour, same label, same place).

- Colour: one per track (an object keeps its colour while it is tracked), per class without
  tracking; `PALETTE` indexed by the id modulo its length.
- Mask: blended in at `MASK_ALPHA` (the rest is the frame), wherever the instance's region is.
- Box: a 2-pixel outline; label above its top edge, on a box of its colour: "#7 star 0.93" with
  tracking, "star 0.93" without.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from segstream.pipeline.messages import FrameResult, Instance

#: Mask/box colours (RGB), indexed by track id, or class id without tracking.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)
#: Weight of the instance's colour in a mask pixel (the rest is the frame): semi-transparent.
MASK_ALPHA = 0.55


def class_colour(class_id: int, track_id: int | None = None) -> tuple[int, int, int]:
    """An instance's colour: by track when the tracker gave it one (an object keeps its colour), else by class."""
    return PALETTE[(track_id if track_id is not None else class_id) % len(PALETTE)]


def instance_colour(inst: Instance) -> tuple[int, int, int]:
    return class_colour(inst.class_id, inst.track_id)


def instance_text(inst: Instance) -> str:
    """The label drawn on an instance: "#7 star 0.93" with tracking, "star 0.93" without."""
    text = f"{inst.label} {inst.score:.2f}"
    return text if inst.track_id is None else f"#{inst.track_id} {text}"


def display_size(width: int, height: int, max_width: int | None) -> tuple[int, int]:
    """(width, height) of the drawn frame: the real frame size, scaled down to max_width (None: never)."""
    if max_width is None or width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


def draw(result: FrameResult, max_width: int | None = None) -> np.ndarray:
    """uint8 [h, w, 3] RGB: the frame at display size (the real frame's width x height, scaled
    down to at most `max_width` wide), masks blended in, boxes and labels drawn.

    The frame's image may be smaller than the real frame (decoded straight to the engine's input
    size); instances are in real-frame pixels, so everything is scaled from frame.width/height.
    """
    frame = result.frame
    out_w, out_h = display_size(frame.width, frame.height, max_width)
    image = frame.host_image()
    if image.shape[:2] != (out_h, out_w):
        image = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR))
    sx, sy = out_w / frame.width, out_h / frame.height
    canvas = image.astype(np.float32)
    for inst in result.instances:
        _blend_mask(canvas, inst, sx, sy)
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for inst in result.instances:
        colour = instance_colour(inst)
        x1, y1, x2, y2 = (inst.box[0] * sx, inst.box[1] * sy, inst.box[2] * sx, inst.box[3] * sy)
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        text = instance_text(inst)
        left, top, right, bottom = pen.textbbox((0, 0), text)
        ty = max(0.0, y1 - (bottom - top) - 3)
        pen.rectangle((x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 3), fill=colour)
        pen.text((x1 + 2, ty), text, fill=(0, 0, 0))
    return np.asarray(picture)


def _blend_mask(canvas: np.ndarray, inst: Instance, sx: float, sy: float) -> None:
    """Blend the instance's region (bool [y1-y0, x1-x0] at region_box, real-frame pixels) into
    `canvas` (float32 [h, w, 3], the frame scaled by sx, sy)."""
    if inst.region is None or inst.region_box is None or not inst.region.any():
        return
    x0, y0, x1, y1 = inst.region_box
    h, w = canvas.shape[:2]
    dx0, dy0 = int(np.floor(x0 * sx)), int(np.floor(y0 * sy))
    dx1, dy1 = min(w, max(dx0 + 1, int(np.ceil(x1 * sx)))), min(h, max(dy0 + 1, int(np.ceil(y1 * sy))))
    if dx0 >= w or dy0 >= h:
        return
    region = inst.region
    if region.shape != (dy1 - dy0, dx1 - dx0):  # nearest neighbour keeps the mask binary
        region = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize((dx1 - dx0, dy1 - dy0),
                                                                                 Image.NEAREST)) > 127
    view = canvas[dy0:dy1, dx0:dx1]
    colour = np.asarray(instance_colour(inst), np.float32)
    view[region] = (1.0 - MASK_ALPHA) * view[region] + MASK_ALPHA * colour
