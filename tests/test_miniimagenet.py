"""miniImageNet from JPEG folders, tars and pickle caches made in the real formats (subsets of the real CSVs)."""

import hashlib
import pickle
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from metabench import MetabenchError
from metabench.data import fetch, store

CLASSES_PER_PART, IMAGES_PER_CLASS = 3, 4


@pytest.fixture
def subset(tmp_path, shared_data):
    """Split CSVs in the real format: the first classes and images of the real Ravi & Larochelle files."""
    splits = tmp_path / "splits"
    splits.mkdir()
    chosen = {}
    for part in ("train", "val", "test"):
        lines = (shared_data / "miniimagenet/splits/ravi" / f"{part}.csv").read_text().splitlines()
        rows, seen = [], {}
        for line in lines[1:]:
            name, label = line.split(",")
            if label not in seen and len(seen) == CLASSES_PER_PART:
                continue
            seen.setdefault(label, 0)
            if seen[label] < IMAGES_PER_CLASS:
                seen[label] += 1
                rows.append((name, label))
        (splits / f"{part}.csv").write_text("filename,label\n" + "".join(f"{n},{label}\n" for n, label in rows))
        chosen[part] = rows
    return splits, chosen


def colour(index: int) -> tuple[int, int, int]:
    return (index * 7 % 256, 255 - index * 7 % 256, 128)


def write_jpegs(folder, chosen):
    folder.mkdir(parents=True)
    index = 0
    for rows in chosen.values():
        for name, _ in rows:
            Image.new("RGB", (100 + index, 90), colour(index)).save(folder / name, quality=95)
            index += 1


def test_jpeg_folder_gives_84x84_rgb_classes_in_csv_order(tmp_path, subset):
    splits, chosen = subset
    write_jpegs(tmp_path / "mini" / "images", chosen)
    options = {"source": str(tmp_path / "mini"), "splits_source": str(splits)}
    dataset = fetch("miniimagenet", options, tmp_path / "data")
    train = store.load("miniimagenet", tmp_path / "data", verify=True).split("train")
    assert dataset.image_shape == (84, 84, 3)
    assert train.n_classes == CLASSES_PER_PART and (train.class_sizes == IMAGES_PER_CLASS).all()
    assert train.class_names == list(dict.fromkeys(label for _, label in chosen["train"]))
    np.testing.assert_allclose(train.images[1, 40, 40], colour(1), atol=3)  # second image of the CSV, JPEG-lossy


def test_tar_of_jpegs_matches_the_folder(tmp_path, subset):
    splits, chosen = subset
    write_jpegs(tmp_path / "mini" / "images", chosen)
    with tarfile.open(tmp_path / "mini.tar", "w") as archive:
        archive.add(tmp_path / "mini" / "images", arcname="images")
    from_tar = fetch(
        "miniimagenet", {"source": str(tmp_path / "mini.tar"), "splits_source": str(splits)}, tmp_path / "a"
    )
    from_dir = fetch("miniimagenet", {"source": str(tmp_path / "mini"), "splits_source": str(splits)}, tmp_path / "b")
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(from_tar.split(part).images, from_dir.split(part).images)


@pytest.mark.fault
def test_missing_image_names_it_and_says_where_to_get_the_data(tmp_path, subset):
    splits, chosen = subset
    write_jpegs(tmp_path / "mini", chosen)
    (tmp_path / "mini" / chosen["val"][2][0]).unlink()
    with pytest.raises(MetabenchError, match=f"1 images of val.csv are missing .*{chosen['val'][2][0]}.*ImageNet"):
        fetch("miniimagenet", {"source": str(tmp_path / "mini"), "splits_source": str(splits)}, tmp_path / "data")
    assert not store.exists("miniimagenet", tmp_path / "data")


def test_no_source_says_where_to_get_the_data(tmp_path):
    with pytest.raises(MetabenchError, match="set data.miniimagenet.source"):
        fetch("miniimagenet", {}, tmp_path / "data")


def write_caches(folder, chosen, size=84):
    folder.mkdir()
    checksums = {}
    for part, rows in chosen.items():
        labels = list(dict.fromkeys(label for _, label in rows))
        images = np.stack([np.full((size, size, 3), i, np.uint8) for i in range(len(rows))])
        class_dict = {label: [i for i, (_, name) in enumerate(rows) if name == label] for label in labels}
        path = folder / f"mini-imagenet-cache-{part}.pkl"
        path.write_bytes(pickle.dumps({"image_data": images, "class_dict": class_dict}))
        checksums[path.name] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return checksums


def test_pickle_caches_over_http_with_checksums(tmp_path, subset, http_server):
    splits, chosen = subset
    checksums = write_caches(tmp_path / "served", chosen)
    shutil.copytree(splits, tmp_path / "served" / "splits")
    url = http_server(tmp_path / "served")
    options = {"format": "pickle", "source": url, "checksums": checksums, "splits_source": url + "splits"}
    dataset = fetch("miniimagenet", options, tmp_path / "data")
    test = dataset.split("test")
    assert test.n_classes == CLASSES_PER_PART and test.images.shape[1:] == (84, 84, 3)
    assert test.images[IMAGES_PER_CLASS, 0, 0, 0] == IMAGES_PER_CLASS  # first image of the second class

    bad = {**checksums, "mini-imagenet-cache-val.pkl": "sha256:" + "0" * 64}
    with pytest.raises(MetabenchError, match="sha256"):
        fetch("miniimagenet", {**options, "checksums": bad}, tmp_path / "other")


@pytest.mark.fault
def test_corrupt_pickle_and_wrong_classes_are_clear_errors(tmp_path, subset):
    splits, chosen = subset
    write_caches(tmp_path / "caches", chosen)
    options = {"format": "pickle", "source": str(tmp_path / "caches"), "splits_source": str(splits)}
    cache = tmp_path / "caches" / "mini-imagenet-cache-train.pkl"
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.raises(MetabenchError, match="not a miniImageNet pickle cache"):
        fetch("miniimagenet", options, tmp_path / "data")
    write_caches(tmp_path / "swapped", {"train": chosen["val"], "val": chosen["train"], "test": chosen["test"]})
    with pytest.raises(MetabenchError, match="other classes than train.csv"):
        fetch("miniimagenet", {**options, "source": str(tmp_path / "swapped")}, tmp_path / "data")


class _Exploit:
    """Unpickling this calls os.system: what a crafted cache would do to a plain pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.fault
def test_a_crafted_pickle_cache_executes_nothing(tmp_path, subset):
    splits, chosen = subset
    write_caches(tmp_path / "caches", chosen)
    marker = tmp_path / "executed"
    cache = tmp_path / "caches" / "mini-imagenet-cache-train.pkl"
    cache.write_bytes(pickle.dumps({"image_data": _Exploit(marker), "class_dict": {}}))
    options = {"format": "pickle", "source": str(tmp_path / "caches"), "splits_source": str(splits)}
    with pytest.raises(MetabenchError, match="refused posix.system|refused os.system"):
        fetch("miniimagenet", options, tmp_path / "data")
    assert not marker.exists()
