"""Decoding users' image files into the store's uint8 arrays (one place for mode and resize rules)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from metabench import MetabenchError


def resize(image: Image.Image, size: int, mode: str = "RGB") -> np.ndarray:
    """``mode`` (RGB or L), Lanczos-resized to size×size: (size, size, channels) uint8."""
    array = np.asarray(image.convert(mode).resize((size, size), Image.LANCZOS), dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def decode(data: bytes, name: str, size: int, mode: str = "RGB") -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) with a one-line error naming ``name`` if it is not one."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return resize(image, size, mode)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MetabenchError(f"{name} cannot be read as an image ({error}); remove or replace it") from error
