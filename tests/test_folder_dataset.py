"""A user's folder of class sub-folders becomes a dataset with a seeded, disjoint class split."""

import pytest
from PIL import Image

from metabench import MetabenchError
from metabench.data import fetch, store


def make_tree(root, superclasses=0, classes=10, images=3):
    for c in range(classes):
        folder = root / (f"super{c % superclasses}" if superclasses else "") / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(images):
            mode = "L" if i == 0 else "RGBA"  # mixed modes and sizes, as users' folders are
            Image.new(mode, (30 + i, 20 + c), 10 * c if mode == "L" else (10 * c, 0, 0, 255)).save(folder / f"{i}.png")
        (folder / "notes.txt").write_text("not an image")
    return root


def test_flat_folder_split_by_class_is_disjoint_complete_and_seeded(tmp_path):
    make_tree(tmp_path / "mine")
    options = {"source": str(tmp_path / "mine"), "name": "mine", "image_size": 16}
    dataset = fetch("folder", options, tmp_path / "data")
    names = {part: set(split.class_names) for part, split in dataset.splits.items()}
    assert sum(len(n) for n in names.values()) == 10 and not (names["train"] & names["test"])
    assert dataset.image_shape == (16, 16, 3)
    assert (store.load("mine", tmp_path / "data").split("train").class_sizes == 3).all()
    again = fetch("folder", options, tmp_path / "again")
    assert {p: set(s.class_names) for p, s in again.splits.items()} == names
    other = fetch("folder", {**options, "seed": 1}, tmp_path / "other")
    assert {p: set(s.class_names) for p, s in other.splits.items()} != names


def test_nested_folders_split_by_superclass(tmp_path):
    make_tree(tmp_path / "mine", superclasses=5, classes=20)
    options = {
        "source": str(tmp_path / "mine"),
        "split_by": "superclass",
        "mode": "L",
        "image_size": 8,
        "fractions": [0.6, 0.2, 0.2],
    }
    dataset = fetch("folder", options, tmp_path / "data")
    groups = {part: set(split.groups) for part, split in dataset.splits.items()}
    assert [len(groups[p]) for p in ("train", "val", "test")] == [3, 1, 1]
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert dataset.image_shape == (8, 8, 1)
    # grey value of a class survives conversion: class c was drawn at 10·c
    split = dataset.split("train")
    c = int(split.class_names[0].split("class")[1])
    assert abs(int(split.images[0, 4, 4, 0]) - 10 * c) <= 1


@pytest.mark.fault
def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(MetabenchError, match="is not a folder"):
        fetch("folder", {"source": str(tmp_path / "absent")}, tmp_path / "data")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(MetabenchError, match="no <class>/<image>"):
        fetch("folder", {"source": str(tmp_path / "empty")}, tmp_path / "data")
    make_tree(tmp_path / "two", classes=2)
    with pytest.raises(MetabenchError, match="cannot fill train, val and test"):
        fetch("folder", {"source": str(tmp_path / "two")}, tmp_path / "data")
    root = make_tree(tmp_path / "broken")
    (root / "class03" / "9.png").write_bytes(b"not really a png")
    with pytest.raises(MetabenchError, match="9.png cannot be read as an image"):
        fetch("folder", {"source": str(root)}, tmp_path / "data")


def test_fetch_record_holds_the_stored_checksum_and_changes_with_the_data(tmp_path):
    """The receipt a profile pipeline tracks (``metabench fetch --record``) changes exactly when the data does."""
    import json

    from typer.testing import CliRunner

    from metabench.cli import app

    make_tree(tmp_path / "mine")
    (tmp_path / "params.yaml").write_text(f"data:\n  folder:\n    source: {tmp_path / 'mine'}\n    image_size: 8\n")
    record = tmp_path / "dataset.json"
    command = [
        "fetch",
        "folder",
        "--params",
        str(tmp_path / "params.yaml"),
        "--data-dir",
        str(tmp_path / "data"),
        "--record",
        str(record),
    ]

    def fetch_receipt():
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        return json.loads(record.read_text())

    first = fetch_receipt()
    stored = store.load("folder", tmp_path / "data", verify=True)
    assert first["checksum"] == stored.checksum
    assert sum(part["classes"] for part in first["splits"].values()) == 10
    assert fetch_receipt() == first
    Image.new("L", (30, 20), 255).save(tmp_path / "mine" / "class03" / "0.png")
    assert fetch_receipt()["checksum"] != first["checksum"]
