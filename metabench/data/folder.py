"""A user's own images as a few-shot dataset: ``root/<class>/<image>`` or ``root/<superclass>/<class>/<image>``.

Classes (or, with ``split_by: superclass``, whole superclasses, as FC100 and tieredImageNet do)
are assigned to train / val / test by a seeded shuffle in the given proportions, so the
same folder and seed always give the same split. Images of any size or mode are converted to
``mode`` (RGB or L) and resized to ``image_size`` (Lanczos). Files that are not images are
skipped; an image that cannot be decoded is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metabench import MetabenchError
from metabench.data import store
from metabench.data.images import images_in, read


@dataclass
class FolderConfig:
    source: str = ""  # the root folder
    name: str = "folder"  # store name of the dataset
    image_size: int = 84
    mode: str = "RGB"  # RGB or L (grey)
    fractions: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.20])  # train / val / test
    split_by: str = "class"  # class, or superclass (needs root/<superclass>/<class>/...)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.source:
            raise MetabenchError("data.folder.source is empty; set it to a folder of <class>/<image> sub-folders")
        if self.mode not in ("RGB", "L") or self.split_by not in ("class", "superclass"):
            raise MetabenchError("folder: mode must be RGB or L and split_by class or superclass")
        if len(self.fractions) != 3 or min(self.fractions) <= 0 or abs(sum(self.fractions) - 1) > 1e-6:
            raise MetabenchError(f"folder fractions must be three positive numbers summing to 1, got {self.fractions}")


def discover(root: Path) -> list[tuple[str, str, list[Path]]]:
    """(superclass, class, image files) for every class folder; superclass '' when flat."""
    if not root.is_dir():
        raise MetabenchError(f"{root} is not a folder; give the root of <class>/<image> sub-folders")
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        images = images_in(child)
        if images:
            found.append(("", child.name, images))
            continue
        for grandchild in sorted(p for p in child.iterdir() if p.is_dir()):
            if images := images_in(grandchild):
                found.append((child.name, f"{child.name}/{grandchild.name}", images))
    if not found:
        raise MetabenchError(f"{root} has no <class>/<image> or <superclass>/<class>/<image> folders with images")
    return found


def build(config: FolderConfig, data_dir: Path, progress=None) -> store.Dataset:
    classes = discover(Path(config.source).expanduser())
    units = sorted({sup for sup, _, _ in classes}) if config.split_by == "superclass" else [c for _, c, _ in classes]
    if config.split_by == "superclass" and units == [""]:
        raise MetabenchError("split_by: superclass needs root/<superclass>/<class>/<image> folders")
    order = np.random.default_rng(config.seed).permutation(len(units))
    cuts = np.round(np.cumsum(config.fractions)[:2] * len(units)).astype(int)
    parts = dict(zip(("train", "val", "test"), np.split(order, cuts)))
    if any(len(chosen) == 0 for chosen in parts.values()):
        raise MetabenchError(
            f"{len(units)} {config.split_by}es cannot fill train, val and test; add data or change fractions"
        )
    splits, read_classes = {}, 0
    for part, chosen in parts.items():
        members = {units[i] for i in chosen}
        picked = [c for c in classes if (c[0] if config.split_by == "superclass" else c[1]) in members]
        arrays = []
        for _, _, files in picked:
            arrays.append(np.stack([read(f, config.image_size, config.mode) for f in files]))
            if progress:
                read_classes += 1
                progress("read classes", read_classes, len(classes))
        splits[part] = store.Split.from_classes(
            arrays, [c for _, c, _ in picked], [sup or name for sup, name, _ in picked]
        )
    info = {
        "source": str(config.source),
        "split_by": config.split_by,
        "fractions": config.fractions,
        "seed": config.seed,
        "preprocessing": f"{config.mode}, Lanczos resize to {config.image_size}x{config.image_size}",
    }
    dataset = store.Dataset(config.name, splits, info)
    store.save(dataset, data_dir)
    return dataset
