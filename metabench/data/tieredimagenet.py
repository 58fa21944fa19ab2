"""tieredImageNet (Ren et al., ICLR 2018): 608 ImageNet classes in 34 categories, split by category.

The class split (``synset,category`` rows; 351 / 97 / 160 classes, 20 / 6 / 8 categories) comes
from a URL prefix or folder (``splits_source``). The images are the user's ImageNet training
set, given as ``source``:

* a folder of synset folders (``<source>/<synset>/*.JPEG``, or ``<source>/train/<synset>/...``), or
* the official ``ILSVRC2012_img_train.tar`` (a tar of per-synset tars) or any tar whose members
  are ``<synset>/<file>.JPEG``.

Images are converted to RGB and resized to ``image_size`` (84, Lanczos); ``max_per_class``
keeps the first N files of each class in name order (0: all, about 1,300).
"""

from __future__ import annotations

import contextlib
import csv
import io
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metabench import MetabenchError
from metabench.data import store
from metabench.data.download import fetch_file, join_location, locate
from metabench.data.images import decode

SPLITS_SOURCE = (
    "https://raw.githubusercontent.com/renmengye/few-shot-ssl-public/master/fewshot/data/tiered_imagenet_split/"
)
WHERE = "set data.tieredimagenet.source to your ImageNet training set (a folder of synset folders or ILSVRC2012_img_train.tar)"


@dataclass
class TieredImageNetConfig:
    source: str = ""
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> checksum (tar, split CSVs)
    splits_source: str = SPLITS_SOURCE
    image_size: int = 84
    max_per_class: int = 0

    def __post_init__(self) -> None:
        if not self.source:
            raise MetabenchError(f"tieredImageNet needs ImageNet images: {WHERE}")


def read_class_split(path: Path) -> OrderedDict[str, str]:
    """synset → category, in file order."""
    classes: OrderedDict[str, str] = OrderedDict()
    with open(path, newline="") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if len(row) != 2 or not row[0].startswith("n"):
                raise MetabenchError(f"{path}:{number}: expected 'synset,category', got {row!r}")
            classes[row[0]] = row[1]
    return classes


def _from_folder(root: Path, synset: str) -> list[tuple[str, bytes]] | None:
    for base in (root, root / "train"):
        folder = base / synset
        if folder.is_dir():
            return [(f.name, f.read_bytes()) for f in sorted(folder.iterdir()) if f.is_file()]
    return None


class _TarImages:
    """Images by synset from a tar of ``<synset>/<file>`` members or of per-synset ``<synset>.tar`` members."""

    def __init__(self, path: Path):
        try:
            self.archive = tarfile.open(path)
            members = [m for m in self.archive.getmembers() if m.isfile()]
        except (tarfile.TarError, OSError, EOFError) as error:
            raise MetabenchError(f"{path} is not a readable tar archive ({error}); fetch it again") from error
        self.inner = {Path(m.name).stem: m for m in members if m.name.endswith(".tar")}
        self.flat: dict[str, list[tarfile.TarInfo]] = {}
        for m in members:
            parts = Path(m.name).parts
            if len(parts) >= 2 and not m.name.endswith(".tar"):
                self.flat.setdefault(parts[-2], []).append(m)

    def __enter__(self) -> _TarImages:
        return self

    def __exit__(self, *exc) -> None:
        self.archive.close()

    def images(self, synset: str) -> list[tuple[str, bytes]] | None:
        if synset in self.flat:
            members = sorted(self.flat[synset], key=lambda m: m.name)
            return [(Path(m.name).name, self.archive.extractfile(m).read()) for m in members]
        if synset in self.inner:
            try:
                with tarfile.open(fileobj=io.BytesIO(self.archive.extractfile(self.inner[synset]).read())) as inner:
                    members = sorted((m for m in inner.getmembers() if m.isfile()), key=lambda m: m.name)
                    return [(Path(m.name).name, inner.extractfile(m).read()) for m in members]
            except tarfile.TarError as error:
                raise MetabenchError(f"{synset}.tar inside the archive is damaged ({error}); fetch it again") from error
        return None


def build(config: TieredImageNetConfig, raw_dir: Path, data_dir: Path, progress=None) -> store.Dataset:
    source = locate(config.source, raw_dir, config.checksums.get(Path(config.source).name), WHERE)
    splits = {}
    with _TarImages(source) if source.is_file() else contextlib.nullcontext() as reader:
        for part in ("train", "val", "test"):
            path = fetch_file(
                join_location(config.splits_source, f"{part}.csv"),
                Path(raw_dir) / "splits" / f"{part}.csv",
                config.checksums.get(f"{part}.csv"),
                progress,
            )
            classes = read_class_split(path)
            arrays = []
            for synset in classes:
                files = reader.images(synset) if reader else _from_folder(source, synset)
                if not files:
                    raise MetabenchError(f"class {synset} of {part}.csv has no images in {config.source}; {WHERE}")
                if config.max_per_class:
                    files = files[: config.max_per_class]
                arrays.append(np.stack([decode(data, f"{synset}/{name}", config.image_size) for name, data in files]))
                if progress:
                    progress(f"read {part} classes", len(arrays), len(classes))
            splits[part] = store.Split.from_classes(arrays, list(classes), list(classes.values()))
    info = {
        "source": config.source,
        "split": "ren2018",
        "max_per_class": config.max_per_class,
        "preprocessing": f"RGB, Lanczos resize to {config.image_size}x{config.image_size}",
    }
    dataset = store.Dataset("tieredimagenet", splits, info)
    store.save(dataset, data_dir)
    return dataset
