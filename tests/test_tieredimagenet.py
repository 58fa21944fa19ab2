"""tieredImageNet from an ImageNet-style folder, a tar of synset folders and the official tar of tars."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from metabench import MetabenchError
from metabench.data import fetch

PER_CLASS = 3


@pytest.fixture
def split_dir(tmp_path, shared_data):
    """Split CSVs in the real format: the first 2 classes of each real file."""
    out = tmp_path / "splits"
    out.mkdir()
    chosen = {}
    for part in ("train", "val", "test"):
        rows = (shared_data / "tieredimagenet/splits" / f"{part}.csv").read_text().splitlines()[:2]
        (out / f"{part}.csv").write_text("\n".join(rows) + "\n")
        chosen[part] = [row.split(",") for row in rows]
    return out, chosen


def jpeg(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 100), (value, 50, 200)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def synsets(chosen):
    return [synset for rows in chosen.values() for synset, _ in rows]


def test_folder_of_synset_folders(tmp_path, split_dir):
    splits, chosen = split_dir
    for k, synset in enumerate(synsets(chosen)):
        folder = tmp_path / "imagenet" / "train" / synset
        folder.mkdir(parents=True)
        for i in range(PER_CLASS + 1):
            (folder / f"{synset}_{i}.JPEG").write_bytes(jpeg(10 * k))
    options = {"source": str(tmp_path / "imagenet"), "splits_source": str(splits), "max_per_class": PER_CLASS}
    dataset = fetch("tieredimagenet", options, tmp_path / "data")
    test = dataset.split("test")
    assert dataset.image_shape == (84, 84, 3) and (test.class_sizes == PER_CLASS).all()
    assert test.class_names == [s for s, _ in chosen["test"]] and test.groups == [c for _, c in chosen["test"]]
    np.testing.assert_allclose(test.images[0, 40, 40], (10 * 4, 50, 200), atol=4)  # the 5th synset drawn above


def test_official_tar_of_per_synset_tars_and_a_missing_class(tmp_path, split_dir):
    splits, chosen = split_dir
    outer = tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w")
    for k, synset in enumerate(synsets(chosen)[:-1]):  # the last test class is missing
        inner_bytes = io.BytesIO()
        with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
            for i in range(PER_CLASS):
                data = jpeg(10 * k)
                info = tarfile.TarInfo(f"{synset}_{i}.JPEG")
                info.size = len(data)
                inner.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(f"{synset}.tar")
        info.size = len(inner_bytes.getvalue())
        outer.addfile(info, io.BytesIO(inner_bytes.getvalue()))
    outer.close()
    options = {"source": str(tmp_path / "ILSVRC2012_img_train.tar"), "splits_source": str(splits)}
    missing = synsets(chosen)[-1]
    with pytest.raises(MetabenchError, match=f"class {missing} of test.csv has no images"):
        fetch("tieredimagenet", options, tmp_path / "data")


@pytest.mark.fault
def test_damaged_tar_and_no_source_are_clear(tmp_path, split_dir):
    splits, _ = split_dir
    (tmp_path / "broken.tar").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(MetabenchError, match="not a readable tar archive"):
        fetch("tieredimagenet", {"source": str(tmp_path / "broken.tar"), "splits_source": str(splits)}, tmp_path / "d")
    with pytest.raises(MetabenchError, match="set data.tieredimagenet.source"):
        fetch("tieredimagenet", {}, tmp_path / "d")
