"""Omniglot from the shared copy served over HTTP, into the store, both splits."""

import numpy as np
import pytest

from metabench import MetabenchError
from metabench.data import omniglot, store

CHECKSUMS = {
    "images_background.zip": "sha256:532965db67698b5b1e3dcb08e64ab40909fa36c293aa9ced5f23e9f58ae7bb83",
    "images_evaluation.zip": "sha256:5fa0db4e3c9b46bd52379081fd5a83fbcf5d767d8ab60a3678466fb5e86021b7",
}


@pytest.fixture(scope="module")
def served(shared_data):
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(shared_data)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/omniglot/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def lake(served, tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot")
    config = omniglot.OmniglotConfig(source=served, checksums=CHECKSUMS)
    omniglot.build(config, root / "raw", root / "data")
    return root


def test_lake_split_has_background_for_training_and_evaluation_for_test(lake):
    dataset = store.load("omniglot", lake / "data", verify=True)
    train, val, test = (dataset.split(s) for s in ("train", "val", "test"))
    assert train.n_classes + val.n_classes == 964 and test.n_classes == 659
    assert len(set(train.groups) | set(val.groups)) == 30 and len(set(test.groups)) == 20
    assert len(set(val.groups)) == 5 and not set(val.groups) & set(train.groups)
    assert dataset.image_shape == (28, 28, 1)
    assert set(np.unique(train.class_sizes)) == {20}
    # ink dark on light: most pixels are background
    assert np.median(test.images) > 200


def test_vinyals_split_with_rotations_from_served_list_files(served, lake, shared_data):
    splits_url = served.replace("/omniglot/", "/omniglot/splits/vinyals/")
    config = omniglot.OmniglotConfig(
        source=served, checksums=CHECKSUMS, split="vinyals", splits_source=splits_url, rotations=True
    )
    dataset = omniglot.build(config, lake / "raw", lake / "data")
    assert dataset.name == "omniglot-vinyals-rot"
    counts = {s: dataset.split(s).n_classes for s in ("train", "val", "test")}
    assert counts == {"train": 4112, "val": 688, "test": 1692}
    test = dataset.split("test")
    name = test.class_names[1]
    assert name.endswith("rot090")
    unrotated = test.images[test.offsets[0] : test.offsets[1], ..., 0]
    rotated = test.images[test.offsets[1] : test.offsets[2], ..., 0]
    np.testing.assert_array_equal(np.rot90(unrotated, 1, axes=(1, 2)), rotated)


@pytest.mark.fault
def test_wrong_checksum_fails_without_destroying_the_stored_dataset(served, lake):
    before = store.load("omniglot", lake / "data").checksum
    bad = dict(CHECKSUMS, **{"images_background.zip": "md5:68d2efa1b9178cc56df9314c21c6e718"})
    config = omniglot.OmniglotConfig(source=served, checksums=bad)
    with pytest.raises(MetabenchError, match="md5"):
        omniglot.build(config, lake / "raw-other", lake / "data")
    assert store.load("omniglot", lake / "data", verify=True).checksum == before


def test_unknown_split_name_is_rejected():
    with pytest.raises(MetabenchError, match="lake"):
        omniglot.OmniglotConfig(split="random")
