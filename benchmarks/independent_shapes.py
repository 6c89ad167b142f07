"""Independent renderer of evaluation clips for the synthetic "shapes" domain.

A model trained on clips from the project's own generator (segstream/shapes) could learn
quirks of that one implementation: its rasteriser, its palettes, its background recipes,
its motion model. This file renders clips from the *written* domain spec alone, without
reading or importing segstream, so that scoring a model on its output measures whether it
learned the domain rather than the generator. Every drawing choice here (supersampled
coverage rasterisation, value-noise backgrounds, procedural "photo-like" landscapes and
out-of-focus interiors, pan and sensor noise, bounce motion) is deliberately this file's own.

The spec it follows:
  * classes 1..4 = circle, square, triangle, star (regular 5-pointed); 0 = background;
  * solid random colour with mild per-pixel noise, circumradius 7%-22% of frame height,
    arbitrary rotation, moving and rotating, overlapping (later drawn hides earlier;
    ground truth is the visible part), partly outside the frame at times;
  * varied backgrounds (flat, gradient, noise, clutter, texture, photo-like); a scene cut
    every 15-30 frames to a new background and a new set of 1-6 objects;
  * 640x360, 30 fps, H.264 yuv420p (libx264 crf 23);
  * COCO instances JSON with compressed RLE of each visible mask of >= 40 pixels, and each
    object's identity in the extra field `track` (unique within the clip, kept while the object
    stays in its scene; a scene cut brings new identities).

    .venv/bin/python benchmarks/independent_shapes.py OUT.mp4 OUT.json --seed 5 --frames 200
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as coco_mask

WIDTH, HEIGHT, FPS = 640, 360, 30
CATEGORIES = [(1, "circle"), (2, "square"), (3, "triangle"), (4, "star")]
SUPERSAMPLE = 4  # 16 sub-samples per pixel: coverage steps of 1/16 are plenty for alpha
MIN_VISIBLE_PIXELS = 40
PAN_MARGIN = 24  # backgrounds are rendered this much larger on every side so the camera can pan

Image3 = np.ndarray  # float32 (H, W, 3) in [0, 1]


# ----------------------------------------------------------------------------- colours


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """Any hue; saturation and value drawn wide so greys, pastels and darks all occur."""
    h, s, v = rng.random(), rng.uniform(0.0, 1.0) ** 0.7, rng.uniform(0.15, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def palette_map(rng: np.random.Generator, t: np.ndarray, stops: int) -> Image3:
    """Colourise a scalar field through a random piecewise-linear palette."""
    xs = np.sort(np.concatenate([[0.0, 1.0], rng.random(stops - 2)]))
    cols = np.stack([random_colour(rng) for _ in range(stops)])
    out = np.stack([np.interp(t, xs, cols[:, c]) for c in range(3)], axis=-1)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- noise


def value_noise(rng: np.random.Generator, h: int, w: int, cells: float, octaves: int,
                persistence: float = 0.5) -> np.ndarray:
    """Multi-octave value noise in [0, 1]: bicubic-upsampled random grids, finer ones weaker."""
    acc = np.zeros((h, w), dtype=np.float32)
    amp = 1.0
    for o in range(octaves):
        gw = max(2, int(round(cells * 2 ** o)))
        gh = max(2, int(round(gw * h / w)))
        grid = Image.fromarray(rng.random((gh, gw)).astype(np.float32))
        acc += amp * np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.float32)
        amp *= persistence
    lo, hi = float(acc.min()), float(acc.max())
    return (acc - lo) / max(hi - lo, 1e-6)


def noise_1d(rng: np.random.Generator, n: int, knots: int, octaves: int) -> np.ndarray:
    """Fractal 1-D profile in [0, 1], used for ridge lines."""
    x = np.linspace(0.0, 1.0, n)
    acc = np.zeros(n)
    amp = 1.0
    for o in range(octaves):
        k = knots * 2 ** o
        acc += amp * np.interp(x, np.linspace(0.0, 1.0, k), rng.random(k))
        amp *= 0.5
    return (acc - acc.min()) / max(acc.max() - acc.min(), 1e-6)


def blur(img: Image3, radius: float) -> Image3:
    pil = Image.fromarray(to_uint8(img)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(pil, dtype=np.float32) / 255.0


def to_uint8(img: Image3) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- backgrounds
# Each recipe returns an (h, w, 3) image. Anything drawn here must not be mistakable for an
# object (it is unlabelled), so clutter uses elongated ellipses, non-square rectangles and
# lumpy blobs, never sharp circles, squares, triangles or stars.


def bg_flat(rng: np.random.Generator, h: int, w: int) -> Image3:
    return np.broadcast_to(random_colour(rng), (h, w, 3)).copy()


def bg_gradient(rng: np.random.Generator, h: int, w: int) -> Image3:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.6:
        a = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
    else:  # radial, centre possibly off-frame
        cx, cy = rng.uniform(-0.3, 1.3) * w, rng.uniform(-0.3, 1.3) * h
        t = np.hypot(xx - cx, yy - cy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return palette_map(rng, t, int(rng.integers(2, 4)))


def bg_noise(rng: np.random.Generator, h: int, w: int) -> Image3:
    t = value_noise(rng, h, w, cells=rng.uniform(2, 12), octaves=int(rng.integers(2, 6)),
                    persistence=rng.uniform(0.35, 0.7))
    return palette_map(rng, t, int(rng.integers(2, 5)))


def lumpy_blob(rng: np.random.Generator, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Smooth irregular outline: low harmonics only, so it never reads as a polygon or star."""
    phi = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    rad = np.ones_like(phi)
    for k in (2, 3):
        rad += rng.uniform(0.1, 0.35) * np.sin(k * phi + rng.uniform(0, 2 * math.pi))
    sx, sy = rng.uniform(0.5, 1.6), rng.uniform(0.5, 1.6)
    return [(cx + r * sx * q * math.cos(p), cy + r * sy * q * math.sin(p)) for p, q in zip(phi, rad)]


def draw_clutter(rng: np.random.Generator, img: Image3, count: int) -> Image3:
    h, w = img.shape[:2]
    pil = Image.fromarray(to_uint8(img))
    draw = ImageDraw.Draw(pil)
    for _ in range(count):
        col = tuple(int(c * 255) for c in random_colour(rng))
        kind = rng.random()
        if kind < 0.4:  # straight lines and polylines (cables, edges, scribbles)
            pts = [(rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h)
                   for _ in range(int(rng.integers(2, 6)))]
            draw.line(pts, fill=col, width=int(rng.integers(1, 7)), joint="curve")
        elif kind < 0.75:
            draw.polygon(lumpy_blob(rng, rng.uniform(0, w), rng.uniform(0, h),
                                    rng.uniform(0.03, 0.15) * h), fill=col)
        else:  # elongated ellipse: aspect >= 1.8 keeps it far from a circle
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            ry = rng.uniform(0.02, 0.08) * h
            rx = ry * rng.uniform(1.8, 4.0)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=col)
    return np.asarray(pil, dtype=np.float32) / 255.0


def bg_clutter(rng: np.random.Generator, h: int, w: int) -> Image3:
    base = [bg_flat, bg_gradient, bg_noise][int(rng.integers(0, 3))](rng, h, w)
    return draw_clutter(rng, base, int(rng.integers(8, 40)))


def bg_texture(rng: np.random.Generator, h: int, w: int) -> Image3:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, math.pi)
    u = xx * math.cos(a) + yy * math.sin(a)
    v = -xx * math.sin(a) + yy * math.cos(a)
    period = rng.uniform(5, 24)
    kind = int(rng.integers(0, 4))
    if kind == 0:  # stripes
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period)
    elif kind == 1:  # checker; tiles kept under 14 px, well below the smallest square (~35 px side)
        cell = min(period, 14.0)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif kind == 2:  # wood grain: rings perturbed by noise
        cx, cy = rng.uniform(-1, 2) * w, rng.uniform(-1, 2) * h
        warp = value_noise(rng, h, w, cells=4, octaves=3) * period * 3
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (np.hypot(xx - cx, yy - cy) + warp) / period)
    else:  # weave
        t = 0.5 + 0.25 * (np.sin(2 * math.pi * u / period) + np.sin(2 * math.pi * v / period))
    t = np.clip(0.8 * t + 0.2 * value_noise(rng, h, w, cells=30, octaves=2), 0, 1)
    return palette_map(rng, t, 2)


def bg_landscape(rng: np.random.Generator, h: int, w: int) -> Image3:
    """Photo-like outdoor scene: sky, clouds, layered ridges fading with distance, textured ground."""
    yy = np.mgrid[0:h, 0:w][0].astype(np.float32) / h
    horizon = rng.uniform(0.35, 0.7)
    top = np.array(colorsys.hsv_to_rgb(rng.uniform(0.52, 0.68), rng.uniform(0.3, 0.8), rng.uniform(0.5, 0.95)))
    low = np.array(colorsys.hsv_to_rgb(rng.uniform(0.0, 0.15) if rng.random() < 0.3 else rng.uniform(0.5, 0.6),
                                       rng.uniform(0.05, 0.4), rng.uniform(0.8, 1.0)))
    t = np.clip(yy / horizon, 0, 1)[..., None]
    img = ((1 - t) * top + t * low).astype(np.float32)
    cloud = value_noise(rng, h, w, cells=rng.uniform(3, 7), octaves=5)
    thr = rng.uniform(0.45, 0.7)
    alpha = np.clip((cloud - thr) / 0.25, 0, 1)[..., None] * rng.uniform(0.3, 0.9)
    img = img * (1 - alpha) + alpha * np.float32(rng.uniform(0.85, 1.0))
    layers = int(rng.integers(1, 4))
    ground_hue = rng.uniform(0.05, 0.4)
    for i in range(layers):  # far to near: each nearer layer darker, more saturated, lower
        depth = (i + 1) / layers
        ridge = horizon - (1 - depth) * rng.uniform(0.05, 0.25) + (depth - 1) * 0.02
        profile = (ridge - rng.uniform(0.03, 0.15) * noise_1d(rng, w, int(rng.integers(3, 9)), 5)) * h
        below = (np.arange(h)[:, None] >= profile[None, :])[..., None]
        col = np.array(colorsys.hsv_to_rgb(ground_hue + rng.uniform(-0.05, 0.05),
                                           0.15 + 0.5 * depth, 0.75 - 0.4 * depth))
        col = (1 - 0.6 * (1 - depth)) * col + 0.6 * (1 - depth) * low  # aerial perspective
        shade = 0.7 + 0.6 * value_noise(rng, h, w, cells=10 + 30 * depth, octaves=4)[..., None]
        img = np.where(below, (col * shade).astype(np.float32), img)
    return blur(img, rng.uniform(0.4, 1.2))


def bg_interior(rng: np.random.Generator, h: int, w: int) -> Image3:
    """Photo-like out-of-focus interior: layers of furniture-ish rectangles and blobs, the
    farther ones blurred more, as a shallow depth of field would render them."""
    img = bg_gradient(rng, h, w)
    for depth in range(3):
        pil = Image.fromarray(to_uint8(img))
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(4, 14))):
            col = tuple(int(c * 255) for c in random_colour(rng))
            x, y = rng.uniform(-0.1, 1.0) * w, rng.uniform(-0.1, 1.0) * h
            bh = rng.uniform(0.05, 0.5) * h
            bw = bh * rng.choice([rng.uniform(0.15, 0.55), rng.uniform(1.8, 4.0)])  # never square
            if rng.random() < 0.6:
                draw.rectangle([x, y, x + bw, y + bh], fill=col)
            else:
                draw.polygon(lumpy_blob(rng, x, y, bh / 2), fill=col)
        img = blur(np.asarray(pil, dtype=np.float32) / 255.0, [8.0, 3.0, 1.0][depth] * rng.uniform(0.6, 1.4))
    light = 0.75 + 0.5 * value_noise(rng, h, w, cells=2, octaves=2)[..., None]  # uneven lighting
    return np.clip(img * light, 0, 1).astype(np.float32)


BACKGROUNDS: list[Callable[[np.random.Generator, int, int], Image3]] = [
    bg_flat, bg_gradient, bg_noise, bg_clutter, bg_texture, bg_landscape, bg_interior]


# ----------------------------------------------------------------------------- objects


@dataclass
class Shape:
    category: int  # 1 circle, 2 square, 3 triangle, 4 star
    cx: float
    cy: float
    vx: float
    vy: float
    radius: float  # circumradius in pixels
    growth: float  # per-frame relative change of radius (approach / recede)
    angle: float
    spin: float
    colour: np.ndarray
    star_inner: float  # inner/outer radius ratio, stars only
    track: int = -1  # identity within the clip, for tracking ground truth

    def step(self) -> None:
        self.cx += self.vx
        self.cy += self.vy
        self.angle += self.spin
        lo, hi = 0.07 * HEIGHT, 0.22 * HEIGHT
        self.radius *= 1 + self.growth
        if not lo <= self.radius <= hi:
            self.radius = min(max(self.radius, lo), hi)
            self.growth = -self.growth
        # Bounce once the centre is half a radius outside: the object is then well cut by
        # the frame edge (spec: partly outside at times) but never leaves for good.
        m = 0.5 * self.radius
        if (self.cx < -m and self.vx < 0) or (self.cx > WIDTH + m and self.vx > 0):
            self.vx = -self.vx
        if (self.cy < -m and self.vy < 0) or (self.cy > HEIGHT + m and self.vy > 0):
            self.vy = -self.vy

    def vertices(self) -> list[tuple[float, float]]:
        if self.category == 2:
            rs = [self.radius] * 4
        elif self.category == 3:
            rs = [self.radius] * 3
        else:
            rs = [self.radius, self.radius * self.star_inner] * 5
        n = len(rs)
        return [(self.cx + r * math.cos(self.angle + 2 * math.pi * k / n),
                 self.cy + r * math.sin(self.angle + 2 * math.pi * k / n)) for k, r in enumerate(rs)]


def new_shape(rng: np.random.Generator, bg: Image3) -> Shape:
    cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
    # An object the same colour as the background under it cannot fairly be asked for, so a
    # few redraws push its colour away from the local background mean.
    local = bg[int(cy) + PAN_MARGIN, int(cx) + PAN_MARGIN]
    colour = random_colour(rng)
    for _ in range(8):
        if float(np.abs(colour - local).sum()) > 0.35:
            break
        colour = random_colour(rng)
    speed, heading = rng.uniform(0.3, 5.0), rng.uniform(0, 2 * math.pi)
    return Shape(category=int(rng.integers(1, 5)), cx=cx, cy=cy,
                 vx=speed * math.cos(heading), vy=speed * math.sin(heading),
                 radius=rng.uniform(0.07, 0.22) * HEIGHT, growth=rng.uniform(-0.01, 0.01),
                 angle=rng.uniform(0, 2 * math.pi), spin=rng.uniform(-0.08, 0.08),
                 colour=colour, star_inner=rng.uniform(0.38, 0.5))


def coverage(shape: Shape) -> tuple[int, int, np.ndarray] | None:
    """Fraction of each pixel covered by the shape, over its clipped bounding box only.

    Pixel (x, y) spans [x, x+1) x [y, y+1); each is split into SUPERSAMPLE^2 sub-pixels
    whose centres are tested, and the coverage is their mean (an exact box filter)."""
    r, s = shape.radius, SUPERSAMPLE
    x0, y0 = max(0, int(math.floor(shape.cx - r)) - 1), max(0, int(math.floor(shape.cy - r)) - 1)
    x1 = min(WIDTH, int(math.ceil(shape.cx + r)) + 1)
    y1 = min(HEIGHT, int(math.ceil(shape.cy + r)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    w, h = x1 - x0, y1 - y0
    if shape.category == 1:
        sub = (np.arange(w * s) + 0.5) / s + x0, (np.arange(h * s) + 0.5) / s + y0
        inside = ((sub[0][None, :] - shape.cx) ** 2 + (sub[1][:, None] - shape.cy) ** 2) <= r * r
        hit = inside.astype(np.float32)
    else:
        canvas = Image.new("L", (w * s, h * s), 0)
        # PIL puts sub-pixel u's centre at integer u; shift so it sits at continuous (u+0.5)/s.
        pts = [((x - x0) * s - 0.5, (y - y0) * s - 0.5) for x, y in shape.vertices()]
        ImageDraw.Draw(canvas).polygon(pts, fill=1)
        hit = np.asarray(canvas, dtype=np.float32)
    return x0, y0, hit.reshape(h, s, w, s).mean(axis=(1, 3))


# ----------------------------------------------------------------------------- rendering


def render(out_video: Path, out_json: Path, seed: int, frames: int, crf: int = 23) -> None:
    rng = np.random.default_rng(seed)
    container = av.open(str(out_video), mode="w")
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"crf": str(crf), "preset": "medium"}
    stream.codec_context.thread_count = 2  # fixed, so the bitstream is the same run to run

    images: list[dict] = []
    annotations: list[dict] = []
    shapes: list[Shape] = []
    bg = np.zeros((1, 1, 3), np.float32)
    pan = np.zeros(2)
    pan_v = np.zeros(2)
    next_cut = 0
    tracks = 0
    for f in range(frames):
        if f == next_cut:  # scene cut: everything new
            next_cut = f + int(rng.integers(15, 31))
            recipe = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
            bg = recipe(rng, HEIGHT + 2 * PAN_MARGIN, WIDTH + 2 * PAN_MARGIN)
            shapes = [new_shape(rng, bg) for _ in range(int(rng.integers(1, 7)))]
            for sh in shapes:  # numbered after drawing, so the random stream (and the clip) is unchanged
                sh.track, tracks = tracks, tracks + 1
            pan = rng.uniform(0, 2 * PAN_MARGIN, size=2)
            pan_v = rng.uniform(-0.8, 0.8, size=2) * (rng.random() < 0.5)  # half the scenes pan
        else:
            for sh in shapes:
                sh.step()
            pan = pan + pan_v
            pan_v = np.where((pan < 0) | (pan > 2 * PAN_MARGIN), -pan_v, pan_v)
            pan = np.clip(pan, 0, 2 * PAN_MARGIN)

        px, py = int(round(pan[0])), int(round(pan[1]))
        frame = bg[py:py + HEIGHT, px:px + WIDTH].copy()
        masks: list[tuple[int, int, np.ndarray]] = []
        for sh in shapes:  # list order is draw order: later hides earlier
            cov = coverage(sh)
            if cov is None:
                continue
            x0, y0, c = cov
            h, w = c.shape
            fill = sh.colour + rng.normal(0.0, 0.025, size=(h, w, 3)).astype(np.float32)
            region = frame[y0:y0 + h, x0:x0 + w]
            a = c[..., None]
            frame[y0:y0 + h, x0:x0 + w] = region * (1 - a) + fill * a
            full = np.zeros((HEIGHT, WIDTH), dtype=bool)
            full[y0:y0 + h, x0:x0 + w] = c >= 0.5
            masks.append((sh.category, sh.track, full))
        frame += rng.normal(0.0, 0.012, size=frame.shape).astype(np.float32)  # sensor noise

        image_id = f + 1
        images.append({"id": image_id, "frame": f, "file_name": f"{out_video.name}#{f}",
                       "width": WIDTH, "height": HEIGHT})
        covered = np.zeros((HEIGHT, WIDTH), dtype=bool)
        frame_anns: list[dict] = []
        for category, track, full in reversed(masks):  # top-most first, so `covered` is what hides
            visible = full & ~covered
            covered |= full
            area = int(visible.sum())
            if area < MIN_VISIBLE_PIXELS:
                continue
            rle = coco_mask.encode(np.asfortranarray(visible.astype(np.uint8)))
            frame_anns.append({"image_id": image_id, "category_id": category,
                               "segmentation": {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode("ascii")},
                               "area": float(area), "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                               "iscrowd": 0, "track": track})
        for ann in reversed(frame_anns):  # ids in draw order, bottom to top
            annotations.append({"id": len(annotations) + 1, **ann})

        vf = av.VideoFrame.from_ndarray(to_uint8(frame), format="rgb24")
        for packet in stream.encode(vf):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()

    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in CATEGORIES]}
    out_json.write_text(json.dumps(coco))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_video", type=Path)
    ap.add_argument("out_json", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--crf", type=int, default=23)
    args = ap.parse_args()
    render(args.out_video, args.out_json, args.seed, args.frames, args.crf)
    print(f"wrote {args.out_video} and {args.out_json} ({args.frames} frames, seed {args.seed})")


if __name__ == "__main__":
    main()
