"""CIFAR-FS and FC100 from an archive built in the exact CIFAR-100 python format, served over HTTP."""

import hashlib
import io
import json
import pickle
import shutil
import sys
import tarfile

import numpy as np
import pytest

from metabench import MetabenchError
from metabench.data import fetch, store

TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 2


def class_table(shared_data):
    """The 100 (superclass, class) pairs, from the real CIFAR-FS split files."""
    pairs = []
    for part in ("train", "val", "test"):
        pairs += [tuple(p) for p in json.loads((shared_data / "cifar100/splits/cifar-fs" / f"{part}.json").read_text())]
    assert len(pairs) == 100
    return sorted(pairs, key=lambda p: p[1])


def pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def make_archive(path, pairs):
    """cifar-100-python.tar.gz as the official one: pickled dicts with bytes keys, rows channel-major."""
    fine_names = [cls for _, cls in pairs]
    coarse_names = sorted({sup for sup, _ in pairs})
    parts = {}
    for part, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        rows, fine, coarse = [], [], []
        for label, (sup, _) in enumerate(pairs):
            for i in range(count):
                image = np.zeros((3, 32, 32), np.uint8)
                image[0], image[1], image[2] = label, i + (100 if part == "test" else 0), 200
                image[0, 0, 1] = 7  # a marker at row 0, column 1 of the red plane
                rows.append(image.reshape(-1))
                fine.append(label)
                coarse.append(coarse_names.index(sup))
        parts[part] = {
            b"data": np.stack(rows),
            b"fine_labels": fine,
            b"coarse_labels": coarse,
            b"filenames": [b"x.png"] * len(fine),
            b"batch_label": part.encode(),
        }
    meta = {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, obj in (("meta", meta), ("train", parts["train"]), ("test", parts["test"])):
            data = pickled(obj)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path, shared_data, http_server):
    root = tmp_path / "served"
    root.mkdir()
    checksum = make_archive(root / "cifar-100-python.tar.gz", class_table(shared_data))
    shutil.copytree(shared_data / "cifar100/splits", root / "splits")
    url = http_server(root)
    return {"source": url + "cifar-100-python.tar.gz", "checksum": checksum, "splits_source": url + "splits"}, root


def test_cifar_fs_has_64_16_20_classes_of_600_style_images_in_hwc(served, tmp_path):
    options, _ = served
    dataset = fetch("cifar-fs", options, tmp_path / "data")
    sizes = {name: split.n_classes for name, split in dataset.splits.items()}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    loaded = store.load("cifar-fs", tmp_path / "data", verify=True)
    split = loaded.split("train")
    assert loaded.image_shape == (32, 32, 3)
    assert (split.class_sizes == TRAIN_PER_CLASS + TEST_PER_CLASS).all()
    first = split.images[split.offsets[0] : split.offsets[1]]
    assert (first[..., 2] == 200).all()  # blue plane stayed blue: channel-major rows were transposed
    assert first[0, 0, 1, 0] == 7 and first[0, 1, 0, 0] != 7  # row 0, column 1: not transposed spatially
    assert sorted(first[:, 5, 5, 1].tolist()) == [0, 1, 2, 3, 100, 101]  # 4 official-train + 2 official-test images
    # every image of a class carries that class's label in its red plane
    for c in range(split.n_classes):
        reds = split.images[split.offsets[c] : split.offsets[c + 1], 5, 5, 0]
        assert len(set(reds.tolist())) == 1


def test_fc100_splits_by_superclass(served, tmp_path):
    options, _ = served
    dataset = fetch("fc100", options, tmp_path / "data")
    assert {name: split.n_classes for name, split in dataset.splits.items()} == {"train": 60, "val": 20, "test": 20}
    groups = {name: set(split.groups) for name, split in dataset.splits.items()}
    assert len(groups["train"]) == 12 and len(groups["val"]) == 4 and len(groups["test"]) == 4
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]


@pytest.mark.fault
def test_checksum_mismatch_is_refused_and_nothing_is_stored(served, tmp_path):
    options, _ = served
    with pytest.raises(MetabenchError, match="md5"):
        fetch("cifar-fs", {**options, "checksum": "md5:" + "0" * 32}, tmp_path / "data")
    assert not store.exists("cifar-fs", tmp_path / "data")
    assert not list((tmp_path / "data" / "raw" / "cifar100").glob("*.tar.gz"))


@pytest.mark.fault
def test_a_damaged_archive_with_a_matching_checksum_gives_a_clear_error(served, tmp_path):
    options, root = served
    archive = root / "cifar-100-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:2000])
    damaged = "md5:" + hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(MetabenchError, match="not a readable CIFAR-100 archive"):
        fetch("cifar-fs", {**options, "checksum": damaged}, tmp_path / "data")


def test_a_missing_split_file_names_what_to_do(served, tmp_path):
    options, root = served
    (root / "splits" / "fc100" / "val.json").unlink()
    with pytest.raises(MetabenchError, match="404"):
        fetch("fc100", options, tmp_path / "data")
    assert not store.exists("fc100", tmp_path / "data")


def test_local_archive_path_works_without_a_server(served, tmp_path):
    options, root = served
    local = {**options, "source": str(root / "cifar-100-python.tar.gz"), "splits_source": str(root / "splits")}
    assert fetch("cifar-fs", local, tmp_path / "data").split("test").n_classes == 20


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.fault
def test_a_crafted_archive_with_the_checksum_the_user_was_told_to_set_executes_nothing(
    served, shared_data, tmp_path, monkeypatch
):
    """The checksum-mismatch error tells a user how to accept another archive: that must not run code."""
    options, root = served
    marker = tmp_path / "executed"
    real = pickle.dumps

    def with_exploit(obj, protocol=2):
        return real({**obj, b"fine_label_names": _Exploit(marker)} if b"fine_label_names" in obj else obj, protocol)

    monkeypatch.setattr(sys.modules[__name__], "pickled", with_exploit)
    checksum = make_archive(root / "cifar-100-python.tar.gz", class_table(shared_data))
    with pytest.raises(MetabenchError, match="refused posix.system|refused os.system"):
        fetch("cifar-fs", {**options, "checksum": checksum}, tmp_path / "data")
    assert not marker.exists() and not store.exists("cifar-fs", tmp_path / "data")


@pytest.mark.fault
def test_fetch_from_a_url_on_the_command_line(served, tmp_path):
    from typer.testing import CliRunner

    from metabench.cli import app

    options, _ = served
    params = tmp_path / "params.yaml"
    params.write_text(
        f"data:\n  cifar-fs:\n    checksum: {options['checksum']}\n    splits_source: {options['splits_source']}\n"
    )
    result = CliRunner().invoke(
        app,
        ["fetch", "cifar-fs", "--from", options["source"], "--params", str(params), "--data-dir", str(tmp_path / "d")],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert store.load("cifar-fs", tmp_path / "d", verify=True).split("test").n_classes == 20
