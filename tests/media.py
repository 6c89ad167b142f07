"""Real encoded test videos, made with PyAV's bundled FFmpeg encoders."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# (codec, container suffix, pixel format): the formats users feed us.
CODECS = {
    "h264-mp4": ("libx264", ".mp4", "yuv420p"),
    "hevc-mkv": ("libx265", ".mkv", "yuv420p"),
    "vp9-webm": ("libvpx-vp9", ".webm", "yuv420p"),
    "mjpeg-avi": ("mjpeg", ".avi", "yuvj420p"),
}


def scene(index: int, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3]: a gradient with a disc and a square moving across it."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), np.full_like(x, 90)], -1).astype(np.uint8)
    r = max(4, height // 6)
    cx, cy = (index * 7) % max(width, 1), height // 2
    image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = (240, 240, 30)
    sx = width - 1 - (index * 5) % max(width, 1)
    image[max(0, cy - r) : cy + r, max(0, sx - r) : sx + r] = (30, 60, 230)
    return image


def write_clip(path: str | Path, kind: str = "h264-mp4", width: int = 320, height: int = 180,
               frames: int = 24, fps: int = 30, pix_fmt: str | None = None) -> Path:
    """Encode `frames` frames of `scene` with the codec of `kind` (see CODECS) into `path`."""
    return encode_images(path, (scene(i, width, height) for i in range(frames)), kind, fps, pix_fmt)


def encode_images(path: str | Path, images, kind: str = "h264-mp4", fps: int = 30, pix_fmt: str | None = None) -> Path:
    """Encode uint8 [H, W, 3] RGB images (all one size) with the codec of `kind` into `path`."""
    codec, _, default_fmt = CODECS[kind]
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.pix_fmt = pix_fmt or default_fmt
        if codec == "libx265":
            stream.options = {"x265-params": "log-level=none"}
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for i, image in enumerate(images):
            if i == 0:
                stream.height, stream.width = image.shape[:2]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_shapes_clip(path: str | Path, frames: int = 16, width: int = 480, height: int = 270, seed: int = 7) -> Path:
    """An H.264 clip of the bundled model's own domain (painted shapes on held-out photos), for the
    NVDEC check: `benchmarks/gpu_check.sh prepare` writes one for the GPU machine, which lacks PyAV."""
    from segstream.shapes.backgrounds import HELDOUT_PHOTOS, random_background
    from segstream.shapes.dataset import random_scene
    from segstream.shapes.scene import paint

    rng = np.random.default_rng(seed)
    images = [paint(random_background(rng, width, height, HELDOUT_PHOTOS), random_scene(rng, width, height), rng)[0]
              for _ in range(frames)]
    return encode_images(path, images)


def count_decodable_frames(path: str | Path) -> int:
    """Frames FFmpeg decodes from the file, counted independently of segstream."""
    n = 0
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            try:
                n += len(packet.decode())
            except av.error.FFmpegError:
                pass
    return n
