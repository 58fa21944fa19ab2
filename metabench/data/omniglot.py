"""Omniglot (Lake et al., Science 2015) from its official zips into the dataset store.

Two splits of the 1,623 characters are offered:

* ``lake``: the 30 background alphabets for meta-training (the last ``val_alphabets`` of them,
  in sorted order, held out for validation) and the 20 evaluation alphabets for testing;
* ``vinyals``: the Vinyals et al. (2016) character split used by Prototypical Networks
  (1,028 / 172 / 423 characters), read from its published list files.

With ``rotations`` each character also appears rotated by 90°, 180° and 270° as three new
classes (Santoro et al. 2016; Vinyals et al. 2016). Images are converted to grey and resized
from 105×105 to ``image_size`` with Lanczos filtering; ink is dark on a light background, as in
the source.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metabench import MetabenchError
from metabench.data import store
from metabench.data.download import fetch_file, join_location
from metabench.data.images import decode

OFFICIAL_SOURCE = "https://github.com/brendenlake/omniglot/raw/master/python/"
OFFICIAL_CHECKSUMS = {
    "images_background.zip": "md5:68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "md5:6b91aef0f799c5bb55b94e3f2daec811",
}
VINYALS_SOURCE = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/data/omniglot/splits/vinyals/"
)
ROTATIONS = (0, 90, 180, 270)


@dataclass
class OmniglotConfig:
    """Where Omniglot comes from and how it is split; filled from params.yaml ``data.omniglot``."""

    source: str = OFFICIAL_SOURCE  # URL prefix or local directory holding the two zips
    # checksum of each zip at that source; the official md5s belong to the official URL only
    checksums: dict[str, str] = field(default_factory=lambda: dict(OFFICIAL_CHECKSUMS))
    split: str = "lake"  # "lake" (background / evaluation alphabets) or "vinyals"
    splits_source: str = VINYALS_SOURCE  # URL prefix or directory of {train,val,test}.txt
    splits_checksums: dict[str, str] = field(default_factory=dict)  # optional, per list file
    rotations: bool = False  # add 90/180/270-degree rotations as new classes
    val_alphabets: int = 5  # lake split: background alphabets held out for validation
    image_size: int = 28

    def __post_init__(self) -> None:
        if self.split not in ("lake", "vinyals"):
            raise MetabenchError(f"omniglot split {self.split!r} is unknown; use 'lake' or 'vinyals'")
        if self.image_size < 8:
            raise MetabenchError(f"omniglot image_size {self.image_size} is too small; use 28 (the standard) or more")

    @property
    def store_name(self) -> str:
        """Each split/rotation choice is its own stored dataset."""
        return "omniglot" + ("-vinyals" if self.split == "vinyals" else "") + ("-rot" if self.rotations else "")


def read_zip(path: Path, image_size: int) -> dict[tuple[str, str], np.ndarray]:
    """Read every character of an Omniglot zip: {(alphabet, character): (20, S, S) uint8}."""
    characters: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                parts = member.split("/")
                if len(parts) != 4 or not parts[3].endswith(".png"):
                    continue
                _, alphabet, character, filename = parts
                small = decode(archive.read(member), f"{path}:{member}", image_size, "L")[..., 0]
                characters.setdefault((alphabet, character), []).append((filename, small))
    except zipfile.BadZipFile as error:
        raise MetabenchError(f"{path} is not a valid zip ({error}); delete it and fetch again") from error
    if not characters:
        raise MetabenchError(f"{path} holds no Omniglot images (<root>/<Alphabet>/<character>/<file>.png)")
    return {key: np.stack([image for _, image in sorted(items)]) for key, items in characters.items()}


def _split_from_classes(entries: list[tuple[str, str, int]], images: dict) -> store.Split:
    """Build one split from (alphabet, character, rotation) entries."""
    blocks, names, groups = [], [], []
    for alphabet, character, rotation in entries:
        if (alphabet, character) not in images:
            raise MetabenchError(f"split lists {alphabet}/{character}, which the Omniglot zips do not contain")
        blocks.append(np.rot90(images[(alphabet, character)], k=rotation // 90, axes=(1, 2)))
        names.append(f"{alphabet}/{character}/rot{rotation:03d}")
        groups.append(alphabet)
    sizes = [len(block) for block in blocks]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    stacked = np.ascontiguousarray(np.concatenate(blocks)[..., None])
    return store.Split(stacked, offsets, names, groups)


def _lake_entries(background: dict, evaluation: dict, config: OmniglotConfig) -> dict[str, list]:
    rotations = ROTATIONS if config.rotations else (0,)
    alphabets = sorted({alphabet for alphabet, _ in background})
    if not 0 <= config.val_alphabets < len(alphabets):
        raise MetabenchError(f"val_alphabets must be between 0 and {len(alphabets) - 1}, got {config.val_alphabets}")
    val_set = set(alphabets[len(alphabets) - config.val_alphabets :])

    def entries(chars, keep):
        return [(a, c, r) for a, c in sorted(chars) if keep(a) for r in rotations]

    return {
        "train": entries(background, lambda a: a not in val_set),
        "val": entries(background, lambda a: a in val_set),
        "test": entries(evaluation, lambda a: True),
    }


def _vinyals_entries(split_files: dict[str, Path], config: OmniglotConfig) -> dict[str, list]:
    result = {}
    for split, path in split_files.items():
        entries = []
        for line_number, line in enumerate(path.read_text().split(), start=1):
            try:
                alphabet, character, rot = line.split("/")
                rotation = int(rot.removeprefix("rot"))
            except ValueError as error:
                raise MetabenchError(
                    f"{path}:{line_number}: expected 'Alphabet/characterNN/rotDDD', got {line!r}"
                ) from error
            if rotation == 0 or config.rotations:
                entries.append((alphabet, character, rotation))
        result[split] = entries
    return result


def build(config: OmniglotConfig, raw_dir: Path, data_dir: Path, progress=None) -> store.Dataset:
    """Fetch (or reuse verified) zips into ``raw_dir`` and store the converted dataset."""
    zips = {}
    for filename in ("images_background.zip", "images_evaluation.zip"):
        checksum = config.checksums.get(filename)
        if checksum is None:
            raise MetabenchError(f"no checksum configured for {filename}; set data.omniglot.checksums in params.yaml")
        zips[filename] = fetch_file(
            join_location(config.source, filename), Path(raw_dir) / filename, checksum, progress
        )
    background = read_zip(zips["images_background.zip"], config.image_size)
    evaluation = read_zip(zips["images_evaluation.zip"], config.image_size)
    if config.split == "lake":
        entries = _lake_entries(background, evaluation, config)
    else:
        split_files = {
            split: fetch_file(
                join_location(config.splits_source, f"{split}.txt"),
                Path(raw_dir) / "vinyals" / f"{split}.txt",
                config.splits_checksums.get(f"{split}.txt"),
                progress,
            )
            for split in ("train", "val", "test")
        }
        entries = _vinyals_entries(split_files, config)
    every = {**background, **evaluation}
    splits = {name: _split_from_classes(items, every) for name, items in entries.items() if items}
    info = {
        "source": config.source,
        "source_checksums": {name: config.checksums[name] for name in zips},
        "split": config.split,
        "rotations": config.rotations,
        "preprocessing": f"grey, Lanczos resize 105->{config.image_size}, ink dark on light",
    }
    dataset = store.Dataset(config.store_name, splits, info)
    store.save(dataset, data_dir)
    return dataset
