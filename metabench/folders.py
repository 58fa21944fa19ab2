"""Reading the user's own support and query folders for ``metabench predict`` and ``metabench.predict``.

The support directory holds one sub-folder of images per class; the query directory holds
images. Every image, whatever its size and mode, is converted as the training data was: to the
checkpoint's channels (grey or RGB), resized to its square size with Lanczos filtering.
"""

from __future__ import annotations

from pathlib import Path

import torch

from metabench import MetabenchError
from metabench.data.images import IMAGE_SUFFIXES, images_in, read


def load_image(path: Path, channels: int, size: int) -> torch.Tensor:
    """(C, size, size) float tensor in [0, 1], converted like the training data."""
    array = read(path, size, "L" if channels == 1 else "RGB")
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def load_support(directory: Path, channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    directory = Path(directory)
    if not directory.is_dir():
        raise MetabenchError(
            f"support directory {directory} does not exist; give a folder with one sub-folder per class"
        )
    classes = sorted(p for p in directory.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise MetabenchError(f"{directory} must hold at least 2 class sub-folders of images, found {len(classes)}")
    images, labels = [], []
    for label, folder in enumerate(classes):
        files = images_in(folder)
        if not files:
            raise MetabenchError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        images += [load_image(f, channels, size) for f in files]
        labels += [label] * len(files)
    return torch.stack(images), torch.tensor(labels), [p.name for p in classes]


def load_queries(directory: Path, channels: int, size: int) -> tuple[torch.Tensor, list[str]]:
    directory = Path(directory)
    if not directory.is_dir():
        raise MetabenchError(f"query directory {directory} does not exist; give a folder of images")
    files = images_in(directory)
    if not files:
        raise MetabenchError(f"query directory {directory} holds no images")
    return torch.stack([load_image(f, channels, size) for f in files]), [f.name for f in files]
