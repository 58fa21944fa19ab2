"""miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) class split, 84×84 RGB.

The images are ImageNet's and are not distributed with metabench: the user points
``data.miniimagenet.source`` at one of the two forms in common use,

* ``format: jpeg``: a folder (files at its root or under ``images/``) or a ``.tar``/``.tar.gz``
  of the JPEGs named as in the split CSVs (``n0153282900000005.jpg``), resized here to
  ``image_size`` (Lanczos), or
* ``format: pickle``: a folder or URL prefix holding the pre-resized caches
  ``mini-imagenet-cache-{train,val,test}.pkl`` (a dict with ``image_data``, N×84×84×3 uint8,
  and ``class_dict``, synset → image indices), whose classes are checked against the CSVs.

The split CSVs (``filename,label`` rows; 64 / 16 / 20 classes of 600 images) come from a URL
prefix or a folder (``splits_source``). Any file may carry a checksum in ``checksums``; files
fetched from a URL must.
"""

from __future__ import annotations

import csv
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from metabench import MetabenchError
from metabench.data import safe_pickle, store
from metabench.data.download import fetch_file, join_location, locate
from metabench.data.images import decode, resize

RAVI_SOURCE = "https://raw.githubusercontent.com/twitter-research/meta-learning-lstm/master/data/miniImagenet/"
PARTS = ("train", "val", "test")
WHERE = (
    "set data.miniimagenet.source to a folder or .tar of the Ravi & Larochelle JPEGs, or to the folder "
    "holding mini-imagenet-cache-{train,val,test}.pkl (the images come from ImageNet, under its terms)"
)


@dataclass
class MiniImageNetConfig:
    source: str = ""  # folder / .tar of JPEGs, or folder / URL prefix of the pickle caches
    format: str = "jpeg"  # jpeg or pickle
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> "md5:…" / "sha256:…"
    splits_source: str = RAVI_SOURCE  # URL prefix or folder of {train,val,test}.csv
    image_size: int = 84

    def __post_init__(self) -> None:
        if self.format not in ("jpeg", "pickle"):
            raise MetabenchError(f"miniimagenet format {self.format!r} is unknown; use jpeg or pickle")
        if not self.source:
            raise MetabenchError(f"miniImageNet needs its images: {WHERE}")


def read_split_csv(path: Path) -> OrderedDict[str, list[str]]:
    """Class (synset) → its image file names, in file order."""
    classes: OrderedDict[str, list[str]] = OrderedDict()
    with open(path, newline="") as handle:
        rows = csv.reader(handle)
        if next(rows, None) != ["filename", "label"]:
            raise MetabenchError(f"{path} is not a miniImageNet split file (header 'filename,label')")
        for row in rows:
            if len(row) != 2:
                raise MetabenchError(f"{path}: expected 'filename,label', got {row!r}")
            classes.setdefault(row[1], []).append(row[0])
    return classes


class _JpegSource:
    """Reads JPEG bytes by file name from a folder (root or ``images/``) or a tar archive."""

    def __init__(self, path: Path):
        self.path = path
        self.archive = None
        if path.is_file():
            try:
                self.archive = tarfile.open(path)
            except (tarfile.TarError, OSError) as error:
                raise MetabenchError(f"{path} is not a readable tar archive ({error}); fetch it again") from error
            self.members = {Path(m.name).name: m for m in self.archive.getmembers() if m.isfile()}

    def __enter__(self) -> _JpegSource:
        return self

    def __exit__(self, *exc) -> None:
        if self.archive is not None:
            self.archive.close()

    def has(self, name: str) -> bool:
        if self.archive is not None:
            return name in self.members
        return (self.path / name).is_file() or (self.path / "images" / name).is_file()

    def read(self, name: str) -> bytes:
        if self.archive is not None:
            return self.archive.extractfile(self.members[name]).read()
        direct = self.path / name
        return (direct if direct.is_file() else self.path / "images" / name).read_bytes()


def _from_jpeg(config: MiniImageNetConfig, raw_dir: Path, csvs: dict, progress) -> dict[str, store.Split]:
    path = locate(config.source, raw_dir, config.checksums.get(Path(config.source).name), WHERE)
    splits, total = {}, sum(len(classes) for classes in csvs.values())
    with _JpegSource(path) as source:
        for part, classes in csvs.items():
            missing = [name for names in classes.values() for name in names if not source.has(name)]
            if missing:
                raise MetabenchError(
                    f"{len(missing)} images of {part}.csv are missing from {config.source} "
                    f"(first: {missing[0]}); {WHERE}"
                )
            arrays = []
            for names in classes.values():
                arrays.append(np.stack([decode(source.read(n), n, config.image_size) for n in names]))
                if progress:
                    progress("read classes", sum(s.n_classes for s in splits.values()) + len(arrays), total)
            splits[part] = store.Split.from_classes(arrays, list(classes), list(classes))
        return splits


def _from_pickle(config: MiniImageNetConfig, raw_dir: Path, csvs: dict, progress) -> dict[str, store.Split]:
    splits, total = {}, sum(len(classes) for classes in csvs.values())
    for part, classes in csvs.items():
        name = f"mini-imagenet-cache-{part}.pkl"
        path = locate(join_location(config.source, name), raw_dir, config.checksums.get(name), WHERE)
        try:
            with open(path, "rb") as handle:
                cache = safe_pickle.load(handle)
            images, class_dict = np.asarray(cache["image_data"], dtype=np.uint8), cache["class_dict"]
        except (*safe_pickle.ERRORS, KeyError) as error:
            raise MetabenchError(f"{path} is not a miniImageNet pickle cache ({error!r}); fetch it again") from error
        if set(class_dict) != set(classes):
            raise MetabenchError(
                f"{path} holds other classes than {part}.csv (Ravi & Larochelle split); check the files"
            )
        arrays = []
        for synset in classes:
            chosen = images[np.asarray(class_dict[synset])]
            if chosen.shape[1:3] != (config.image_size, config.image_size):
                chosen = np.stack([resize(Image.fromarray(img), config.image_size) for img in chosen])
            arrays.append(chosen)
            if progress:
                progress("read classes", sum(s.n_classes for s in splits.values()) + len(arrays), total)
        splits[part] = store.Split.from_classes(arrays, list(classes), list(classes))
    return splits


def build(config: MiniImageNetConfig, raw_dir: Path, data_dir: Path, progress=None) -> store.Dataset:
    csvs = {}
    for part in PARTS:
        location = join_location(config.splits_source, f"{part}.csv")
        path = fetch_file(
            location, Path(raw_dir) / "splits" / f"{part}.csv", config.checksums.get(f"{part}.csv"), progress
        )
        csvs[part] = read_split_csv(path)
    reader = _from_jpeg if config.format == "jpeg" else _from_pickle
    splits = reader(config, Path(raw_dir), csvs, progress)
    info = {
        "source": config.source,
        "format": config.format,
        "split": "ravi",
        "preprocessing": f"RGB, Lanczos resize to {config.image_size}x{config.image_size}"
        + (" (pickle caches: already 84x84)" if config.format == "pickle" else ""),
    }
    dataset = store.Dataset("miniimagenet", splits, info)
    store.save(dataset, data_dir)
    return dataset
