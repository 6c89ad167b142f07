"""How the GPU stages are ordered: each on its own CUDA stream, handing work on with events.

    preprocess (its stream) --Batch.ready--> inference (its stream) --FrameDetections.ready--> postprocess (its stream)

A stage makes its output on its own stream, records an event after the last kernel, and sends
the event with the message; the next stage's stream waits for that event (a device-side wait:
no thread blocks). Why not torch's default stream for inference and postprocess: the postprocess
ends with one host wait per batch (for its copy back), and on a stream it shared with inference
that wait would also wait for the next batch's forward pass, queued behind it meanwhile.

Memory: a tensor made on one stream and used on another is handed to the caching allocator's
`record_stream` by the stage that uses it, so its memory is not given to the maker's next
allocation while the user's kernels are still queued. On a CPU there are no streams: every
function here does nothing and `on_stream` is an empty context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only where a CUDA stream exists: a CPU run may have no torch
    import torch


def device_type(device: Any) -> str:
    """"cpu", "cuda", ...: the kind of a torch.device or of a device string ("cuda:0")."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def stage_stream(device: "torch.device | str") -> "torch.cuda.Stream | None":
    """A new CUDA stream for one stage on `device`; None on a CPU (without importing torch)."""
    if device_type(device) != "cuda":
        return None
    import torch

    return torch.cuda.Stream(torch.device(device))


@contextlib.contextmanager
def on_stream(stream: "torch.cuda.Stream | None") -> Iterator[None]:
    """Make `stream` the calling thread's current stream inside the block (nothing on a CPU)."""
    if stream is None:
        yield
        return
    import torch

    with torch.cuda.stream(stream):
        yield


def take_over(stream: "torch.cuda.Stream | None", ready: Iterable["torch.cuda.Event | None"],
              tensors: Iterable["torch.Tensor"]) -> None:
    """Order `stream` after the producers' events and mark their CUDA tensors as used on it."""
    if stream is None:
        return
    waited: set[int] = set()
    for event in ready:
        if event is not None and id(event) not in waited:  # a batch's frames share one event
            stream.wait_event(event)
            waited.add(id(event))
    for tensor in tensors:
        if tensor.is_cuda:
            tensor.record_stream(stream)


def hand_over(stream: "torch.cuda.Stream | None") -> "torch.cuda.Event | None":
    """An event recorded on `stream` after everything queued so far (None on a CPU)."""
    if stream is None:
        return None
    import torch

    event = torch.cuda.Event()
    event.record(stream)
    return event
