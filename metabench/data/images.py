"""Users' image files into the store's uint8 arrays: the one place for which files are images,
how they are decoded, and the mode and resize rule (datasets and ``metabench predict`` alike)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from metabench import MetabenchError

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, any case), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def resize(image: Image.Image, size: int, mode: str = "RGB") -> np.ndarray:
    """``mode`` (RGB or L), Lanczos-resized to size×size: (size, size, channels) uint8."""
    array = np.array(image.convert(mode).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def decode(data: bytes, name: str, size: int, mode: str = "RGB") -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) with a one-line error naming ``name`` if it is not one."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return resize(image, size, mode)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MetabenchError(f"{name} cannot be read as an image ({error}); remove or replace it") from error


def read(path: Path, size: int, mode: str = "RGB") -> np.ndarray:
    """An image file, decoded and resized like ``decode``."""
    return decode(Path(path).read_bytes(), str(path), size, mode)
