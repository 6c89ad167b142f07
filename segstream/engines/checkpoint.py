"""Project checkpoint format: safetensors tensors + the ModelConfig in the file's metadata.

Nothing is unpickled. The metadata holds two strings:
  "segstream.model"  - ModelConfig.to_json()
  "segstream.sha256" - SHA-256 over the tensors (names, dtypes, shapes and bytes, in name order),
                       so a file whose weights were altered after saving is rejected.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from segstream.engines.model_config import ModelConfig, ModelConfigError

if TYPE_CHECKING:  # torch and safetensors load on use: the errors and read_model_config stay importable on a base install
    import torch

MODEL_KEY = "segstream.model"
HASH_KEY = "segstream.sha256"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says why in one line."""


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and contents, independent of dict order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # reshape: 0-dim tensors (BatchNorm counters) cannot be viewed as bytes
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], config: ModelConfig) -> Path:
    """Write weights and their ModelConfig to one .safetensors file (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage; clone so every tensor owns its bytes.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    metadata = {MODEL_KEY: config.to_json(), HASH_KEY: tensors_digest(tensors)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_model_config(path: str | Path) -> ModelConfig:
    """Only the ModelConfig of a checkpoint (cheap: reads the header)."""
    return load_checkpoint(path, verify=False, tensors=False)[0]


def load_checkpoint(
    path: str | Path, verify: bool = True, tensors: bool = True
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a project checkpoint.

    Returns (config, state_dict) with CPU tensors. Raises CheckpointError for a missing file, a
    file that is not safetensors, missing metadata, or (verify=True) tensors that do not match the
    recorded hash.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({_first_line(exc)})") from None
    if MODEL_KEY not in metadata:
        raise CheckpointError(f"{path} has no segstream model description (metadata key {MODEL_KEY!r})")
    try:
        config = ModelConfig.from_json(metadata[MODEL_KEY])
    except ModelConfigError as exc:
        raise CheckpointError(f"{path}: bad model description: {exc}") from None
    if tensors and verify:
        expected = metadata.get(HASH_KEY)
        if expected is None:
            raise CheckpointError(f"{path} has no content hash (metadata key {HASH_KEY!r})")
        if tensors_digest(state) != expected:
            raise CheckpointError(f"{path} failed its integrity check: the weights were modified after saving")
    return config, state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
