"""N-way K-shot episodes: sampling with an explicit generator, and fixed evaluation sets.

How episodes are drawn (stated in every report): each episode picks ``ways`` distinct classes
uniformly at random, then ``shots + queries`` distinct images of each class; the support and
query sets of one episode never share an image. Episodes are drawn independently of each other,
so two episodes may share classes or images (sampling *with* replacement across episodes, the
common practice; Lafargue et al., TMLR 2024, show this understates the width of intervals).

Labels inside an episode are ``0..ways-1`` in the order the classes were drawn, so the label a
class receives is itself random.

Evaluation episodes are generated once per (dataset checksum, split, ways, shots, queries,
seed) and saved as ``.npz``, so every algorithm is scored on identical episodes; this is what
makes paired comparisons between algorithms valid.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metabench import MetabenchError, files
from metabench.data.store import Split


@dataclass(frozen=True)
class EpisodeSpec:
    ways: int
    shots: int
    queries: int

    def check(self, split: Split, split_name: str = "given") -> None:
        """Raise a clear error if ``split`` cannot supply such episodes."""
        if min(self.ways, self.shots, self.queries) < 1:
            raise MetabenchError(f"ways, shots and queries must all be at least 1, got {self}")
        if self.ways > split.n_classes:
            raise MetabenchError(
                f"{self.ways}-way episodes need {self.ways} classes but the {split_name} split has "
                f"{split.n_classes}; lower ways"
            )
        needed = self.shots + self.queries
        smallest = int(split.class_sizes.min())
        if needed > smallest:
            raise MetabenchError(
                f"{self.shots} shots + {self.queries} queries need {needed} images per class but the smallest "
                f"class of the {split_name} split has {smallest}; lower shots or queries"
            )


@dataclass
class EpisodeIndices:
    """Image indices (into one split) of a batch of episodes."""

    support: np.ndarray  # (E, ways, shots) int64
    query: np.ndarray  # (E, ways, queries) int64
    classes: np.ndarray  # (E, ways) int64

    def __len__(self) -> int:
        return len(self.classes)

    def digest(self) -> str:
        """sha256 of the indices: two runs are paired only when their episodes are identical."""
        hasher = hashlib.sha256()
        for array in (self.support, self.query, self.classes):
            hasher.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
            hasher.update(str(array.shape).encode())
        return hasher.hexdigest()

    def __getitem__(self, item) -> EpisodeIndices:
        return EpisodeIndices(self.support[item], self.query[item], self.classes[item])


def sample_indices(split: Split, spec: EpisodeSpec, count: int, rng: np.random.Generator) -> EpisodeIndices:
    """Draw ``count`` episodes from ``split`` using only ``rng`` for randomness."""
    spec.check(split)
    sizes = split.class_sizes
    per_class = spec.shots + spec.queries
    classes = np.empty((count, spec.ways), dtype=np.int64)
    chosen = np.empty((count, spec.ways, per_class), dtype=np.int64)
    for episode in range(count):
        classes[episode] = rng.choice(split.n_classes, spec.ways, replace=False)
        for way, cls in enumerate(classes[episode]):
            chosen[episode, way] = split.offsets[cls] + rng.choice(sizes[cls], per_class, replace=False)
    return EpisodeIndices(chosen[:, :, : spec.shots], chosen[:, :, spec.shots :], classes)


@dataclass
class Episode:
    """Tensors of one or a batch of episodes; images float in [0, 1], (…, C, H, W)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int
    classes: torch.Tensor | None = None  # split-level class id of each way, (…, ways)

    def to(self, device) -> Episode:
        tensors = (self.support_x, self.support_y, self.query_x, self.query_y)
        classes = None if self.classes is None else self.classes.to(device)
        return Episode(*(t.to(device) for t in tensors), self.ways, classes)

    def __len__(self) -> int:
        return len(self.support_x)

    def tasks(self, indices: range) -> Episode:
        """Episodes ``indices`` (consecutive) of a batch, keeping the leading episode axis."""
        part = slice(indices.start, indices.stop)
        classes = None if self.classes is None else self.classes[part]
        return Episode(
            self.support_x[part], self.support_y[part], self.query_x[part], self.query_y[part], self.ways, classes
        )

    def task(self, index: int) -> Episode:
        """Episode ``index`` of a batch, without the leading episode axis."""
        classes = None if self.classes is None else self.classes[index]
        return Episode(
            self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index], self.ways, classes
        )


class ImageBank:
    """A split's images as one uint8 tensor on the device, turned into float batches on demand."""

    def __init__(self, split: Split, device: torch.device | str = "cpu"):
        images = torch.from_numpy(np.array(split.images)).permute(0, 3, 1, 2).contiguous()
        self.images = images.to(device)
        self.device = torch.device(device)

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """Float images in [0, 1] of shape ``indices.shape + (C, H, W)``."""
        flat = torch.from_numpy(np.asarray(indices).reshape(-1)).to(self.device)
        images = self.images.index_select(0, flat).float().div_(255.0)
        return images.reshape(*np.shape(indices), *images.shape[1:])

    def episodes(self, indices: EpisodeIndices) -> Episode:
        """A batch of episodes: support (E, ways*shots, C, H, W), labels (E, ways*shots), etc."""
        count, ways, shots = indices.support.shape
        queries = indices.query.shape[2]
        support_x = self.batch(indices.support.reshape(count, ways * shots))
        query_x = self.batch(indices.query.reshape(count, ways * queries))
        labels = torch.arange(ways, device=self.device)
        support_y = labels.repeat_interleave(shots).expand(count, -1).contiguous()
        query_y = labels.repeat_interleave(queries).expand(count, -1).contiguous()
        classes = torch.from_numpy(indices.classes).to(self.device)
        return Episode(support_x, support_y, query_x, query_y, ways, classes)


def augment_images(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Standard training augmentation of a batch (…, C, H, W), independently per image.

    ``crop``: zero-pad by H/8 on every side, then take a random H×W window (the CIFAR /
    miniImageNet recipe); ``flip``: mirror left-right with probability 1/2. Randomness comes
    only from ``generator``, so a resumed run repeats it exactly.
    """
    if kind == "none":
        return images
    shape = images.shape
    flat = images.reshape(-1, *shape[-3:])
    count, _, height, width = flat.shape
    out = flat
    if "crop" in kind:
        pad = max(1, height // 8)
        padded = torch.nn.functional.pad(flat, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (count,), generator=generator).tolist()
        dx = torch.randint(0, 2 * pad + 1, (count,), generator=generator).tolist()
        out = torch.stack([padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(dy, dx))])
    if "flip" in kind:
        mirror = (torch.rand(count, generator=generator) < 0.5).to(out.device)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out.reshape(shape)


def augment_episode(episode: Episode, kind: str, generator: torch.Generator) -> Episode:
    """``episode`` with support and query images augmented (labels unchanged)."""
    if kind == "none":
        return episode
    return Episode(
        augment_images(episode.support_x, kind, generator),
        episode.support_y,
        augment_images(episode.query_x, kind, generator),
        episode.query_y,
        episode.ways,
        episode.classes,
    )


def episode_key(dataset_name: str, split: str, checksum: str) -> str:
    """The data part of a fixed-episode file name: one place, so every caller shares episodes."""
    return f"{dataset_name}-{split}-{checksum[:12]}"


def fixed_episodes(
    split: Split,
    spec: EpisodeSpec,
    count: int,
    seed: int,
    cache_dir: Path,
    key: str,
    split_name: str = "given",
) -> EpisodeIndices:
    """The evaluation episodes for (``key``, spec, count, seed), saved once and checked on every load.

    ``key`` identifies the data (dataset name, split and checksum); the file name carries every
    other parameter, so different requests never collide. The episodes are a pure function of
    the file name, so a saved file is checked against the episodes drawn again (milliseconds):
    an edited, truncated or foreign file is refused instead of scoring other episodes.
    """
    spec.check(split, split_name)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{key}_{spec.ways}w{spec.shots}s{spec.queries}q_n{count}_seed{seed}.npz"
    indices = sample_indices(split, spec, count, np.random.default_rng(seed))
    if path.is_file():
        try:
            with np.load(path) as saved:
                stored = EpisodeIndices(saved["support"], saved["query"], saved["classes"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise MetabenchError(
                f"episode file {path} is damaged ({type(error).__name__}); delete it and run `metabench episodes`"
            ) from error
        if stored.digest() != indices.digest():
            raise MetabenchError(
                f"episode file {path} holds other episodes than its name describes (edited, or drawn by another "
                f"numpy); delete it and run `metabench episodes` to draw them again"
            )
        return stored
    buffer = io.BytesIO()
    np.savez(buffer, support=indices.support, query=indices.query, classes=indices.classes)
    files.write_atomic(path, buffer.getvalue())
    return indices
