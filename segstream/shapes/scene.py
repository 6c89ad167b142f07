"""Shapes in a frame: the domain's objects and how they are drawn with exact visible masks.

Coordinates are frame pixels (x right, y down, origin at the top-left corner of the top-left
pixel). A shape's "radius" is its circumradius (circle: radius; square, triangle, star: distance
from the centre to a corner/tip). Objects are painted in list order, so a later object hides
the ones below it; the ground truth of each object is its visible part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

#: Class ids 1..4 in this order; 0 is the background.
CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: The ModelConfig.class_names of a shapes model.
MODEL_CLASS_NAMES: tuple[str, ...] = ("__background__",) + CLASS_NAMES

#: Radius range as a fraction of the frame height (the spec says about 7%-22%).
FRAME_SIZE = (640, 360)  # (width, height) of the domain's camera frames
RADIUS_RANGE = (0.065, 0.23)


@dataclass(frozen=True)
class Shape:
    """One object.

    class_id: 1..4 (see CLASS_NAMES).
    cx, cy: centre in frame pixels (may lie outside the frame).
    radius: circumradius in pixels.
    angle: rotation in radians (ignored for circles).
    colour: fill RGB 0..255.
    noise: standard deviation of the per-pixel fill noise (grey levels).
    inner: star only, inner/outer radius ratio.
    vx, vy, spin: motion per frame (pixels, pixels, radians) used by clips.
    """

    class_id: int
    cx: float
    cy: float
    radius: float
    angle: float
    colour: tuple[int, int, int]
    noise: float = 6.0
    inner: float = 0.42
    vx: float = 0.0
    vy: float = 0.0
    spin: float = 0.0

    def moved(self) -> "Shape":
        """The same object one frame later."""
        return replace(self, cx=self.cx + self.vx, cy=self.cy + self.vy, angle=self.angle + self.spin)

    def outline(self) -> np.ndarray:
        """Polygon vertices, float64 [N, 2] (x, y) in frame pixels."""
        if self.class_id == 1:
            n = max(24, int(self.radius * 1.5))
            t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
            r = np.full(n, self.radius)
        elif self.class_id == 2:
            t = self.angle + np.arange(4) * (math.pi / 2) + math.pi / 4
            r = np.full(4, self.radius)
        elif self.class_id == 3:
            t = self.angle + np.arange(3) * (2 * math.pi / 3) - math.pi / 2
            r = np.full(3, self.radius)
        elif self.class_id == 4:
            t = self.angle + np.arange(10) * (math.pi / 5) - math.pi / 2
            r = np.where(np.arange(10) % 2 == 0, self.radius, self.radius * self.inner)
        else:
            raise ValueError(f"class_id {self.class_id} is not one of 1..{len(CLASS_NAMES)}")
        return np.stack([self.cx + r * np.cos(t), self.cy + r * np.sin(t)], axis=1)


def shape_mask(shape: Shape, width: int, height: int) -> np.ndarray:
    """Full (unoccluded) mask of a shape clipped to the frame: bool [height, width]."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if shape.class_id == 1:
        r = shape.radius
        # PIL's ellipse covers pixels whose centres lie inside the box [x0, x1] x [y0, y1].
        draw.ellipse([shape.cx - r, shape.cy - r, shape.cx + r - 1, shape.cy + r - 1], fill=255)
    else:
        draw.polygon([(float(x), float(y)) for x, y in shape.outline()], fill=255)
    return np.asarray(canvas) > 0


def random_shape(rng: np.random.Generator, width: int, height: int, class_id: int | None = None) -> Shape:
    """A random object somewhere in (or partly outside) a width x height frame, with motion."""
    cid = int(rng.integers(1, len(CLASS_NAMES) + 1)) if class_id is None else class_id
    radius = float(rng.uniform(*RADIUS_RANGE)) * height
    # Centres may sit up to 0.6 radius outside the frame: partly visible objects.
    cx = float(rng.uniform(-0.6 * radius, width + 0.6 * radius))
    cy = float(rng.uniform(-0.6 * radius, height + 0.6 * radius))
    speed = float(rng.uniform(0.0, 0.012)) * width
    heading = float(rng.uniform(0, 2 * math.pi))
    return Shape(
        class_id=cid,
        cx=cx,
        cy=cy,
        radius=radius,
        angle=float(rng.uniform(0, 2 * math.pi)),
        colour=random_colour(rng),
        noise=float(rng.uniform(0.0, 12.0)),
        inner=float(rng.uniform(0.36, 0.52)),
        vx=speed * math.cos(heading),
        vy=speed * math.sin(heading),
        spin=float(rng.uniform(-0.06, 0.06)),
    )


def random_scene(rng: np.random.Generator, width: int, height: int) -> list[Shape]:
    """1..9 objects in drawing order, skewed towards a handful."""
    count = int(min(9, 1 + rng.poisson(3.0)))
    return [random_shape(rng, width, height) for _ in range(count)]


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Any hue, any saturation and value: RGB 0..255."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.0, 1.0) ** 0.7, rng.uniform(0.15, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(int(round(c * 255)) for c in rgb)  # type: ignore[return-value]


def paint(
    background: np.ndarray, shapes: list[Shape], rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paint shapes over a background in list order.

    background: uint8 [H, W, 3] RGB (not modified).
    Returns the frame (uint8 [H, W, 3]) and, per shape, its visible mask (bool [H, W]); a shape
    hidden entirely or lying outside the frame gets an all-False mask.
    """
    height, width = background.shape[:2]
    frame = background.astype(np.int16)
    masks = [shape_mask(s, width, height) for s in shapes]
    for shape, mask in zip(shapes, masks):
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        noise = rng.normal(0.0, shape.noise, size=(len(ys), 3)) if shape.noise > 0 else 0.0
        frame[ys, xs] = np.asarray(shape.colour, dtype=np.float64) + noise
    visible = []
    covered = np.zeros((height, width), dtype=bool)
    for mask in reversed(masks):
        visible.append(mask & ~covered)
        covered |= mask
    visible.reverse()
    return np.clip(frame, 0, 255).astype(np.uint8), visible
