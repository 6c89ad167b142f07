"""Backgrounds behind the shapes: flat colours, gradients, noise, clutter, textures and photographs.

All functions return uint8 [height, width, 3] RGB. Clutter draws things that are not objects of
the domain (strokes, elongated ellipses and rectangles, irregular blobs, textured discs), so the
model learns that a coloured or round region alone is not an object. Photographs come from
scikit-image's bundled sample images when that package is installed; otherwise procedural
textures stand in for them.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from segstream.shapes.scene import random_colour

#: Photographs used for training and for held-out clips (never both).
TRAIN_PHOTOS = (
    "astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "camera", "brick", "grass", "gravel", "moon", "cell", "page", "text",
)
HELDOUT_PHOTOS = ("chelsea", "clock", "coins")


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray | None:
    try:
        import skimage.data
    except ImportError:
        return None
    try:
        image = np.asarray(getattr(skimage.data, name)())
    except Exception:  # a sample missing from this scikit-image build is simply not used
        return None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def available_photos(names: tuple[str, ...]) -> list[str]:
    """The photographs of `names` this installation can produce offline."""
    return [n for n in names if _photo(n) is not None]


def flat(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(random_colour(rng), np.uint8), (height, width, 3)).copy()


def gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    a, b = np.asarray(random_colour(rng), np.float32), np.asarray(random_colour(rng), np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if rng.random() < 0.6:
        theta = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(theta) + ys * math.sin(theta)
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        t = np.hypot(xs - cx, ys - cy)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: float) -> np.ndarray:
    """Value noise in [0, 1], float32 [height, width], feature size about `cell` pixels."""
    gw, gh = max(2, int(width / cell) + 2), max(2, int(height / cell) + 2)
    grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((width, height), Image.BICUBIC), np.float32) / 255.0


def noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = np.asarray(random_colour(rng), np.float32)
    other = np.asarray(random_colour(rng), np.float32)
    if rng.random() < 0.5:
        t = _smooth_noise(rng, width, height, rng.uniform(4, 80))[..., None]
        image = base + (other - base) * t
    else:
        image = base + rng.normal(0, rng.uniform(8, 50), (height, width, 1 if rng.random() < 0.5 else 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    a, b = np.asarray(random_colour(rng), np.float32), np.asarray(random_colour(rng), np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    u = xs * math.cos(theta) + ys * math.sin(theta)
    v = -xs * math.sin(theta) + ys * math.cos(theta)
    period = rng.uniform(6, 60)
    kind = rng.integers(0, 4)
    if kind == 0:  # stripes
        t = (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    elif kind == 1:  # checkerboard
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == 2:  # plaid / waves
        t = 0.5 + 0.25 * (np.sin(2 * math.pi * u / period) + np.sin(2 * math.pi * v / rng.uniform(6, 60)))
    else:  # marble-like turbulence
        n = _smooth_noise(rng, width, height, rng.uniform(20, 120))
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period + 8 * n)
    image = a + (b - a) * t[..., None]
    image += rng.normal(0, rng.uniform(0, 10), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def clutter(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A base background with lines, blobs, elongated rectangles and textured discs painted on it.

    None of these is an object of the domain: ellipses and rectangles are elongated, blobs are
    irregular, and discs are filled with a texture or a photograph rather than one colour (a
    coin or a clock face in a photograph is not a circle object).
    """
    base = BASES[int(rng.integers(0, len(BASES)))](rng, width, height)
    canvas = Image.fromarray(base)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 36))):
        colour = random_colour(rng)
        kind = rng.random()
        if kind < 0.35:
            pts = [(float(rng.uniform(-50, width + 50)), float(rng.uniform(-50, height + 50))) for _ in range(int(rng.integers(2, 5)))]
            draw.line(pts, fill=colour, width=int(rng.integers(1, 10)))
        elif kind < 0.55:
            # Elongated ellipse (aspect >= 1.8: never mistaken for a circle).
            r = rng.uniform(0.04, 0.2) * height
            e = _ellipse(rng.uniform(0, width), rng.uniform(0, height), r * rng.uniform(1.8, 4), r, rng.uniform(0, math.pi))
            draw.polygon(e, fill=colour)
        elif kind < 0.8:
            # Irregular blob: a closed curve with a random radial profile.
            r = rng.uniform(0.04, 0.2) * height
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
            prof = np.ones_like(t)
            # Strong low harmonics, weak high ones: lumpy, never a 4- or 5-lobed star look-alike.
            for k, top in ((2, 0.35), (3, 0.3), (4, 0.12), (5, 0.08)):
                prof += rng.uniform(0.0, top) * np.sin(k * t + rng.uniform(0, 2 * math.pi))
            draw.polygon([(float(cx + r * p * math.cos(a)), float(cy + r * p * math.sin(a))) for a, p in zip(t, prof)], fill=colour)
        elif kind < 0.92:
            # Rectangle with aspect >= 1.6 (panels, windows, furniture): not a square.
            b = rng.uniform(0.03, 0.15) * height
            corners = _rectangle(rng.uniform(0, width), rng.uniform(0, height), b * rng.uniform(1.6, 5), b,
                                 rng.uniform(0, math.pi) if rng.random() < 0.5 else 0.0)
            draw.polygon(corners, fill=colour)
        else:
            _paste_textured_disc(rng, canvas, width, height)
            draw = ImageDraw.Draw(canvas)
    if rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    return np.asarray(canvas).copy()


def _rectangle(cx: float, cy: float, a: float, b: float, theta: float) -> list[tuple[float, float]]:
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-a, -b), (a, -b), (a, b), (-a, b))]


def _paste_textured_disc(rng: np.random.Generator, canvas: Image.Image, width: int, height: int) -> None:
    """A disc filled with a texture or a photograph: round, but not one colour."""
    r = int(rng.uniform(0.06, 0.2) * height)
    fill = (texture if rng.random() < 0.5 else photo)(rng, 2 * r, 2 * r)
    mask = Image.new("L", (2 * r, 2 * r), 0)
    ImageDraw.Draw(mask).ellipse([0, 0, 2 * r - 1, 2 * r - 1], fill=255)
    canvas.paste(Image.fromarray(fill), (int(rng.uniform(-r, width - r)), int(rng.uniform(-r, height - r))), mask)


def _ellipse(cx: float, cy: float, a: float, b: float, theta: float) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    return [(float(cx + xi * math.cos(theta) - yi * math.sin(theta)), float(cy + xi * math.sin(theta) + yi * math.cos(theta))) for xi, yi in zip(x, y)]


def photo(rng: np.random.Generator, width: int, height: int, names: tuple[str, ...] = TRAIN_PHOTOS) -> np.ndarray:
    """A random crop of a sample photograph, resized to the frame; a texture when none is available."""
    usable = available_photos(names)
    if not usable:
        return texture(rng, width, height)
    image = _photo(usable[int(rng.integers(0, len(usable)))])
    h, w = image.shape[:2]
    scale = rng.uniform(0.5, 1.0)
    ch = int(min(h, w * height / width) * scale)
    cw = int(ch * width / height)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(image[y0 : y0 + ch, x0 : x0 + cw]).resize((width, height), Image.BILINEAR)
    out = np.asarray(crop, np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    # Mild exposure / colour cast: a camera never delivers the photo's exact colours.
    out = out * rng.uniform(0.7, 1.2, 3) + rng.uniform(-20, 20)
    return np.clip(out, 0, 255).astype(np.uint8)


BASES: tuple[Callable[[np.random.Generator, int, int], np.ndarray], ...] = (flat, gradient, noise, texture)


def random_background(
    rng: np.random.Generator, width: int, height: int, photos: tuple[str, ...] = TRAIN_PHOTOS
) -> np.ndarray:
    """One background of any kind; `photos` picks the photograph pool (training or held-out)."""
    kinds = ["flat", "gradient", "noise", "texture", "clutter", "photo"]
    weights = np.array([0.1, 0.12, 0.14, 0.17, 0.27, 0.2])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    if kind == "photo":
        return photo(rng, width, height, photos)
    return {"flat": flat, "gradient": gradient, "noise": noise, "texture": texture, "clutter": clutter}[kind](rng, width, height)
