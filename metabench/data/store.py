"""The one on-disk format every dataset is converted into.

A dataset lives in ``<root>/<name>/`` as, for each split (``train``, ``val``, ``test``):

* ``<split>.images.npy``: uint8 array ``(n_images, H, W, C)``, images of one class contiguous;
* ``<split>.offsets.npy``: int64 array ``(n_classes + 1,)``; class ``c`` owns images
  ``offsets[c]:offsets[c + 1]`` (this index covers ragged sets as well as dense ones);

plus one ``meta.json`` with class names, their group (alphabet or superclass), the source and
the sha256 of every array file. Loaders for each source only convert into this format, so the
rest of the suite never knows where data came from.

Writes are atomic: files are written into a temporary sibling directory that replaces the old
one only when complete, so an interrupted conversion never destroys a dataset already stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from metabench import MetabenchError, files
from metabench.data.names import SOURCES

SPLITS = ("train", "val", "test")


def _recover(root: Path, name: str, staging_too: bool = False) -> None:
    """Undo a swap a kill interrupted; with ``staging_too`` (before a new save) also drop the
    staging folders of killed saves.

    ``save`` moves the old copy to ``.<name>.old.*/old`` and then the new one into place; a
    kill between the two renames leaves only the old copy, which is put back here.
    """
    final = root / name
    for trash in sorted(root.glob(f".{name}.old.*")):
        old = trash / "old"
        if not final.exists() and (old / "meta.json").is_file():
            os.replace(old, final)
        if not old.exists() or staging_too:
            shutil.rmtree(trash, ignore_errors=True)
    if staging_too:
        for staging in root.glob(f".{name}.*"):
            if staging.is_dir() and not staging.name.startswith(f".{name}.old."):
                shutil.rmtree(staging, ignore_errors=True)


@dataclass
class Split:
    """One split of a dataset: images grouped by class."""

    images: np.ndarray  # (n_images, H, W, C) uint8
    offsets: np.ndarray  # (n_classes + 1,) int64
    class_names: list[str]
    groups: list[str]  # alphabet / superclass of each class

    @classmethod
    def from_classes(cls, arrays: list[np.ndarray], names: list[str], groups: list[str]) -> Split:
        """One split from per-class image arrays (each (n_c, H, W, C)), in the given order."""
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
        return cls(np.concatenate(arrays), offsets, names, groups)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (n, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.offsets) != len(self.class_names) + 1 or len(self.groups) != len(self.class_names):
            raise ValueError("offsets, class_names and groups disagree on the number of classes")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.images) or np.any(np.diff(self.offsets) <= 0):
            raise ValueError("offsets must start at 0, end at n_images and give every class an image")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def labels(self) -> np.ndarray:
        """Class index of every image."""
        return np.repeat(np.arange(self.n_classes), self.class_sizes)


@dataclass
class Dataset:
    """A stored dataset: its splits and the metadata that identifies it."""

    name: str
    splits: dict[str, Split]
    info: dict = field(default_factory=dict)  # source, preprocessing, checksums

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(next(iter(self.splits.values())).images.shape[1:])

    @property
    def checksum(self) -> str:
        """sha256 over every split's arrays: identifies the exact data a result came from."""
        return self.info["checksum"]

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise MetabenchError(f"dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]


@contextlib.contextmanager
def _swap_lock(root: Path, name: str):
    """Held for the two renames of a swap, and by a reader while it opens every file of the
    dataset: a reader then holds open files of one copy, old or new, never a mixture. A store
    the user cannot write (a shared read-only copy) is never swapped, so it needs no lock."""
    try:
        handle = open(Path(root) / f".{name}.swap.lock", "a+")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def fetching(root: Path, name: str):
    """Held for the whole of one fetch of ``name``: a second fetch of the same dataset fails at
    once in one line instead of deleting the first one's files."""
    Path(root).mkdir(parents=True, exist_ok=True)
    return files.exclusive(Path(root), f"dataset {name!r} in {root} (being fetched)", lock_name=f".{name}.fetch.lock")


def save(dataset: Dataset, root: Path) -> Path:
    """Write ``dataset`` under ``root/<name>`` atomically and return that directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _swap_lock(root, dataset.name):
        _recover(root, dataset.name, staging_too=True)
    final = root / dataset.name
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset.name}.", dir=root))
    try:
        stored = {}
        split_meta = {}
        for split_name, split in dataset.splits.items():
            for part, array in (("images", split.images), ("offsets", split.offsets.astype(np.int64))):
                filename = f"{split_name}.{part}.npy"
                np.save(staging / filename, array)
                stored[filename] = files.sha256_file(staging / filename)
            split_meta[split_name] = {
                "n_classes": split.n_classes,
                "n_images": int(len(split.images)),
                "class_names": split.class_names,
                "groups": split.groups,
            }
        overall = hashlib.sha256("".join(f"{k}:{v}" for k, v in sorted(stored.items())).encode()).hexdigest()
        info = dict(dataset.info, checksum=overall, files=stored)
        meta = {"name": dataset.name, "image_shape": list(dataset.image_shape), "splits": split_meta, "info": info}
        (staging / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        dataset.info = info
        with _swap_lock(root, dataset.name):  # readers open a consistent copy, before or after
            if final.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{dataset.name}.old.", dir=root))
                os.replace(final, trash / "old")
                os.replace(staging, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, final)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise MetabenchError(
            f"cannot write dataset {dataset.name!r} to {root} ({files.reason(error)}); free disk space or choose another "
            "data dir (the previously stored copy, if any, is unchanged)"
        ) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def exists(name: str, root: Path) -> bool:
    if Path(root).is_dir():
        with _swap_lock(Path(root), name):
            _recover(Path(root), name)
    return (Path(root) / name / "meta.json").is_file()


def load(name: str, root: Path, verify: bool = False) -> Dataset:
    """Load a stored dataset (memory-mapped); ``verify`` re-checks every file's sha256.

    Every file is opened once, under the swap lock, and what is hashed is what is used (the
    same open file, memory-mapped), so a concurrent re-fetch cannot pair one version's images
    with the other's checksum. Every way a stored dataset can be damaged (a truncated or garbled
    ``meta.json`` or array, offsets that do not describe the images) is a one-line error that
    names the command which rebuilds it.
    """
    directory = Path(root) / name
    rebuild = f"{fetch_advice(name)} again to rebuild it"
    handles: dict[str, IO[bytes]] = {}
    try:
        meta = _open_all(Path(root), name, handles)
        stored_files = meta["info"]["files"]
        if verify:
            for filename, expected in stored_files.items():
                if _sha256(handles[filename]) != expected:
                    raise MetabenchError(f"{directory / filename} is missing or corrupt (sha256 mismatch); {rebuild}")
        splits = {}
        for split_name, split_meta in meta["splits"].items():
            images = _mapped(handles[f"{split_name}.images.npy"])
            offsets = np.array(_mapped(handles[f"{split_name}.offsets.npy"]))
            splits[split_name] = Split(np.asarray(images), offsets, split_meta["class_names"], split_meta["groups"])
        return Dataset(name=meta["name"], splits=splits, info=meta["info"])
    except MetabenchError:
        raise
    except FileNotFoundError as error:
        raise MetabenchError(f"{error.filename} is missing; {rebuild}") from error
    except (OSError, ValueError, KeyError, TypeError, EOFError, UnicodeDecodeError) as error:
        raise MetabenchError(f"{directory} is damaged ({type(error).__name__}: {error}); {rebuild}") from error
    finally:
        for handle in handles.values():
            handle.close()


def fetch_advice(name: str) -> str:
    """What builds stored dataset ``name``: the source it is named after (``omniglot-vinyals``
    comes from ``omniglot``), or, for a name no source makes, the list of sources."""
    source = next((s for s in sorted(SOURCES, key=len, reverse=True) if name == s or name.startswith(f"{s}-")), None)
    if source is None:
        return f"no source makes a dataset called {name!r}: run `metabench fetch` with one of {', '.join(SOURCES)}"
    return f"run `metabench fetch {source}`"


def _open_all(root: Path, name: str, handles: dict[str, IO[bytes]]) -> dict:
    """Open ``meta.json`` and every file it lists into ``handles``, under the swap lock: one copy."""
    directory = root / name
    with _swap_lock(root, name) if root.is_dir() else contextlib.nullcontext():
        if root.is_dir():
            _recover(root, name)
        if not (directory / "meta.json").is_file():
            raise MetabenchError(f"dataset {name!r} is not in {root}; {fetch_advice(name)} first")
        handles["meta.json"] = open(directory / "meta.json", "rb")
        meta = json.loads(handles["meta.json"].read())
        for filename in meta["info"]["files"]:
            handles[filename] = open(directory / filename, "rb")
    return meta


def _sha256(handle: IO[bytes]) -> str:
    handle.seek(0)
    digest = hashlib.sha256()
    while block := handle.read(1 << 20):
        digest.update(block)
    return digest.hexdigest()


def _mapped(handle: IO[bytes]) -> np.ndarray:
    """The .npy array in the open file ``handle``, memory-mapped read-only (the map outlives
    the handle and pins the file's bytes even if it is replaced or deleted)."""
    handle.seek(0)
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    if dtype.hasobject:
        raise ValueError("an object array is not dataset data")
    return np.memmap(handle, dtype=dtype, mode="r", offset=handle.tell(), shape=shape, order="F" if fortran else "C")
