"""Checkpoints and resumable states: written atomically, verified on load, never executed.

A file holds ``{"format", "sha256", "payload"}``: the payload is the ``torch.save`` bytes of
plain data (tensors, numbers, strings, lists, dicts) and ``sha256`` is their hash. Loading
reads both with ``torch.load(weights_only=True)``, which refuses anything but such plain data,
so a crafted file cannot run code; then the hash is checked, so a flipped byte in a weight is
an error instead of a silently wrong result.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import torch

from metabench import MetabenchError, files

FORMAT = "metabench-checkpoint-1"


def canonical(value: Any) -> Any:
    """``value`` rebuilt so that equal payloads pickle to equal bytes. Pickle writes a string it
    has already written as a back-reference only when it is the same *object*: a key read back
    from ``state.pt`` is an equal but distinct string, so a resumed run's checkpoint would differ
    in bytes from the uninterrupted run's. Every string is interned, every container rebuilt."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {canonical(key): canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    if isinstance(value, tuple):
        return tuple(canonical(item) for item in value)
    return value


def save_atomic(payload: Any, path: Path) -> str:
    """Write ``payload`` to ``path`` atomically, the same bytes for equal payloads (``canonical``);
    return the payload's sha256."""
    buffer = io.BytesIO()
    torch.save(canonical(payload), buffer)
    data = buffer.getvalue()
    digest = files.sha256_bytes(data)
    wrapped = io.BytesIO()
    torch.save({"format": FORMAT, "sha256": digest, "payload": data}, wrapped)
    files.write_atomic(path, wrapped.getvalue())
    return digest


def load(path: Path, rebuild: str = "retrain it with `metabench train`") -> dict[str, Any]:
    """The payload saved at ``path``; a one-line error naming ``rebuild`` if it is missing,
    damaged, altered or not a metabench file."""
    path = Path(path)
    if not path.is_file():
        raise MetabenchError(f"{path} does not exist; {rebuild}")
    try:
        wrapped = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(wrapped, dict) or wrapped.get("format") != FORMAT:
            raise MetabenchError(f"{path} is not a metabench checkpoint (or is from an older version); {rebuild}")
        data = wrapped["payload"]
        if files.sha256_bytes(data) != wrapped["sha256"]:
            raise MetabenchError(f"{path} is corrupt (its sha256 does not match its contents); {rebuild}")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except MetabenchError:
        raise
    except Exception as error:  # torch raises many types for a damaged or refused file
        raise MetabenchError(
            f"{path} cannot be read safely ({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}); {rebuild}"
        ) from error
