"""NVDEC file source: the GPU's video decoder writes frames straight into device memory.

    NvdecFileSource(path, stream_id, device)
        -> Frame(image: uint8 CUDA tensor [H, W, 3] RGB, ready: event) ..., EndOfStream

PyNvVideoCodec's SimpleDecoder demuxes the file (with its own FFmpeg), decodes on the GPU's NVDEC
engine and converts NV12 to interleaved RGB on the device, on a CUDA stream this source owns.
Each frame is copied out of the decoder's buffer on that stream (the decoder reuses its
buffers), and the chunk's frames carry one event that the preprocess stream waits for: no pixel
crosses to the host, and the source thread never waits for the GPU.

Chosen by `make_source` for local files when the engine runs on CUDA and `decode_backend` says
NVDEC is usable (`source.decoder`: auto, nvdec or cpu). Cameras and http(s) files keep PyAV: its
reconnection and stall handling are what keep a live feed alive, and NVDEC would save only the
upload of frames already on the host. Nothing here imports PyAV, so the GPU check runs it on a
machine without it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from segstream.pipeline.stages.device_streams import hand_over, on_stream
from segstream.pipeline.sources.locations import redact
from segstream.pipeline.messages import EndOfStream, Frame
from segstream.pipeline.streams import SourceCounters, SourceError, StreamState

#: Frames asked of the decoder at a time (one event per chunk).
CHUNK = 8


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class NvdecFileSource:
    """Decodes a local video file on the GPU: every frame, in order, then EndOfStream(frames=N).

    device: the CUDA device the engine runs on. max_frames / start_frame: as VideoFileSource's
    (frames before start_frame are skipped by seeking; numbering is kept). `path` is a resolved
    absolute path the source policy admitted (make_source): PyNvVideoCodec's own FFmpeg takes no
    protocol whitelist, and an absolute path is always opened with FFmpeg's file protocol.
    """

    live = False
    first_track_id: int | None = None  # the stream's first new track id (a stream taken over; StreamSpec)

    def __init__(self, path: str, stream_id: str, device: torch.device | str, max_frames: int | None = None,
                 start_frame: int | None = None) -> None:
        self.path = path
        self.shown = redact(path)
        self.device = torch.device(device)
        self.stream_id = self.name = stream_id
        self.max_frames = max_frames
        self.start_frame = start_frame
        self.state = StreamState(stream_id, self.shown, "file", decoder="nvdec")
        self.counters = SourceCounters()
        self.expected_frames = 0
        self.frame_seconds = 0.0
        self._stream: torch.cuda.Stream | None = None

    def check(self) -> None:
        """Open once to fail fast with one clear line (missing, not a video, NVDEC refusing it)."""
        if not Path(self.path).is_file():
            raise SourceError(f"video file not found: {self.path}" if not Path(self.path).exists()
                              else f"not a file: {self.path}")
        self._open()

    def _open(self) -> Any:
        try:
            import PyNvVideoCodec as nvc
        except Exception as exc:  # ImportError, or its RuntimeError when the driver lacks NVDEC
            reason = _first_line(exc)
            raise SourceError(f"cannot decode {self.shown} with NVDEC: PyNvVideoCodec does not load ({reason})") from None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        try:
            decoder = nvc.SimpleDecoder(self.path, gpu_id=self.device.index or 0, cuda_stream=self._stream.cuda_stream,
                                        use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
        except Exception as exc:
            raise SourceError(f"cannot decode {self.shown} with NVDEC ({_first_line(exc)})") from None
        self.expected_frames = len(decoder)
        fps = float(getattr(decoder.get_stream_metadata(), "average_fps", 0.0) or 0.0)
        self.frame_seconds = 1.0 / fps if fps > 0 else 0.0
        return decoder

    def items(self, stopping: threading.Event) -> Iterator[Frame | EndOfStream]:
        decoder = self._open()
        index = 0
        if self.start_frame:  # resuming a file (fleet jobs): frames before it were published
            index = min(self.start_frame, self.expected_frames)
            if index < self.expected_frames:
                decoder.seek_to_index(index)
        failure = None
        while not stopping.is_set() and index < self.expected_frames:
            want = CHUNK if self.max_frames is None else min(CHUNK, self.max_frames - index)
            if want <= 0:
                break
            try:
                frames = self._chunk(decoder, index, want)
            except Exception as exc:  # the decoder gave up on the file: what was decoded is published
                failure = _first_line(exc)
                break
            if not frames:
                break
            if index == (self.start_frame or 0):
                self.state.set_state("live")
            for frame in frames:
                self.state.frame_decoded()
                yield frame
            index += len(frames)
        self.counters.decoded = index
        interrupted = stopping.is_set()
        self.state.set_state("ended")
        if index == 0 and not interrupted and failure is None:
            raise SourceError(f"{self.shown}: no decodable video frames")
        limit_hit = self.max_frames is not None and index >= self.max_frames
        short = not (interrupted or limit_hit) and index < self.expected_frames
        error = None
        if failure is not None:
            error = f"{self.shown}: NVDEC stopped at frame {index} ({failure})"
        elif short:
            error = f"{self.shown} is truncated or damaged: decoded {index} of {self.expected_frames} frames"
        yield EndOfStream(self.stream_id, index, interrupted=interrupted or short or failure is not None, error=error)
        if error is not None:
            raise SourceError(error)

    def _chunk(self, decoder: Any, index: int, want: int) -> list[Frame]:
        """Up to `want` frames from `index` on, as device tensors owned by the pipeline."""
        with on_stream(self._stream):  # the decoder's stream: its writes come before these copies
            decoded = decoder.get_batch_frames(want)
            images = [torch.from_dlpack(d).clone() for d in decoded]  # uint8 [H, W, 3] RGB
        if any(image.dim() != 3 or image.shape[2] != 3 or image.dtype != torch.uint8 for image in images):
            raise RuntimeError(f"NVDEC gave frames of {tuple(images[0].shape)} {images[0].dtype}, not uint8 [H, W, 3]")
        ready = hand_over(self._stream)  # after the copies: what preprocess waits for
        now, step = time.time(), self.frame_seconds
        return [Frame(stream_id=self.stream_id, index=index + i, pts=(index + i) * step if step else None,
                      time=now, image=image, ready=ready) for i, image in enumerate(images)]
