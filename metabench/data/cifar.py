"""CIFAR-FS (Bertinetto et al., ICLR 2019) and FC100 (Oreshkin et al., NeurIPS 2018) from CIFAR-100.

Both are class splits of CIFAR-100's 100 fine classes (600 32×32 RGB images each, the official
train and test parts pooled):

* ``cifar-fs``: 64 / 16 / 20 classes drawn at random across superclasses; the split files list
  ``[superclass, class]`` pairs;
* ``fc100``: 12 / 4 / 4 *superclasses* (60 / 20 / 20 classes), so test classes are semantically
  far from training classes; the split files list superclass names.

The images come from the official python archive (``cifar-100-python.tar.gz``, a tar of pickled
dicts with ``data`` (N × 3072, channel-major), ``fine_labels`` and ``coarse_labels``, plus
``meta`` with the label names), fetched from a URL or a local path and checked against its md5;
the split lists (torchmeta's JSON files) from a URL prefix or a local folder.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metabench import MetabenchError
from metabench.data import safe_pickle, store
from metabench.data.download import fetch_file, join_location

OFFICIAL_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
OFFICIAL_CHECKSUM = "md5:eb9058c3a382ffc7106e4002c42a8d85"
SPLITS_SOURCE = "https://raw.githubusercontent.com/tristandeleu/pytorch-meta/master/torchmeta/datasets/assets/cifar100/"
SPLITS = ("cifar-fs", "fc100")
ARCHIVE = "cifar-100-python.tar.gz"


@dataclass
class CifarConfig:
    """Filled from params.yaml ``data.cifar-fs`` or ``data.fc100``."""

    split: str = "cifar-fs"  # cifar-fs or fc100 (set by the source name)
    source: str = OFFICIAL_SOURCE  # URL or local path of cifar-100-python.tar.gz
    checksum: str = OFFICIAL_CHECKSUM  # of that archive; the official md5 belongs to the official file
    splits_source: str = SPLITS_SOURCE  # URL prefix or folder holding <split>/{train,val,test}.json
    splits_checksums: dict[str, str] = field(default_factory=dict)  # optional, "<split>/<part>.json" -> checksum

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise MetabenchError(f"CIFAR split {self.split!r} is unknown; use one of {', '.join(SPLITS)}")


def _unpickle(archive: tarfile.TarFile, member: str) -> dict:
    try:
        handle = archive.extractfile(f"cifar-100-python/{member}")
        if handle is None:
            raise KeyError(member)
        return safe_pickle.load(handle, encoding="bytes")
    except KeyError as error:
        raise MetabenchError(
            f"the archive has no cifar-100-python/{member}; it is not the CIFAR-100 python archive"
        ) from error


def read_archive(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Images (600, 32, 32, 3) uint8 per fine class name, and each class's superclass."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            meta = _unpickle(archive, "meta")
            parts = [_unpickle(archive, part) for part in ("train", "test")]
    except (tarfile.TarError, OSError, *safe_pickle.ERRORS) as error:
        raise MetabenchError(
            f"{path} is not a readable CIFAR-100 archive ({error}); delete it and fetch again"
        ) from error
    fine_names = [name.decode() for name in meta[b"fine_label_names"]]
    coarse_names = [name.decode() for name in meta[b"coarse_label_names"]]
    data = np.concatenate([np.asarray(part[b"data"], dtype=np.uint8) for part in parts])
    fine = np.concatenate([np.asarray(part[b"fine_labels"]) for part in parts])
    coarse = np.concatenate([np.asarray(part[b"coarse_labels"]) for part in parts])
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are channel-major: R, G, B planes
    by_class, superclass = {}, {}
    for label, name in enumerate(fine_names):
        chosen = fine == label
        by_class[name] = np.ascontiguousarray(images[chosen])
        superclass[name] = coarse_names[int(coarse[chosen][0])] if chosen.any() else ""
    return by_class, superclass


def _classes_of(split: str, listing: list, superclass: dict[str, str], path: Path) -> list[str]:
    """The fine classes a split file names, in a fixed (sorted) order."""
    if split == "cifar-fs":
        pairs = [tuple(item) for item in listing]
        unknown = [cls for _, cls in pairs if cls not in superclass]
        if unknown:
            raise MetabenchError(f"{path} names classes CIFAR-100 does not have: {', '.join(unknown[:3])}")
        return sorted(cls for _, cls in pairs)
    known = set(superclass.values())
    unknown = [name for name in listing if name not in known]
    if unknown:
        raise MetabenchError(f"{path} names superclasses CIFAR-100 does not have: {', '.join(unknown[:3])}")
    return sorted(cls for cls, parent in superclass.items() if parent in set(listing))


def build(config: CifarConfig, raw_dir: Path, data_dir: Path, progress=None) -> store.Dataset:
    """Fetch (or reuse the verified) archive and split lists; store the split dataset."""
    archive = fetch_file(config.source, Path(raw_dir) / ARCHIVE, config.checksum, progress)
    images, superclass = read_archive(archive)
    splits = {}
    for part in ("train", "val", "test"):
        name = f"{config.split}/{part}.json"
        path = fetch_file(
            join_location(config.splits_source, name), Path(raw_dir) / name, config.splits_checksums.get(name), progress
        )
        try:
            listing = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise MetabenchError(f"{path} is not valid JSON ({error}); delete it and fetch again") from error
        classes = _classes_of(config.split, listing, superclass, path)
        arrays = [images[cls] for cls in classes]
        splits[part] = store.Split.from_classes(arrays, classes, [superclass[c] for c in classes])
    info = {
        "source": config.source,
        "source_checksums": {ARCHIVE: config.checksum},
        "split": config.split,
        "preprocessing": "none: CIFAR-100 32x32 RGB, official train and test images pooled per class",
    }
    dataset = store.Dataset(config.split, splits, info)
    store.save(dataset, data_dir)
    return dataset
