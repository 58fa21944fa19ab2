"""Saving and loading checkpoints atomically, so a killed run never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from metabench import MetabenchError


def save_atomic(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary sibling, then rename over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise MetabenchError(
            f"cannot write {path} ({error.strerror}); free disk space or choose another runs dir"
        ) from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MetabenchError(f"checkpoint {path} does not exist; train first with `metabench train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise MetabenchError(
            f"checkpoint {path} cannot be read ({type(error).__name__}); retrain or restore it"
        ) from error
