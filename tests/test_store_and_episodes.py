"""The dataset store and the episode sampler."""

import numpy as np
import pytest

from metabench import MetabenchError
from metabench.data import store
from metabench.episodes import EpisodeSpec, ImageBank, fixed_episodes, sample_indices
from tests.conftest import tiny_split


def test_store_round_trip_keeps_arrays_names_and_checksum(tiny_dataset):
    dataset, root = tiny_dataset
    loaded = store.load("tiny", root, verify=True)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(loaded.split(name).images, dataset.split(name).images)
        assert loaded.split(name).class_names == dataset.split(name).class_names
    assert loaded.checksum == dataset.checksum


def test_missing_dataset_tells_the_user_to_fetch(tmp_path):
    with pytest.raises(MetabenchError, match="metabench fetch glyphs"):
        store.load("glyphs", tmp_path)


def test_corrupt_store_file_is_detected(tiny_dataset):
    _, root = tiny_dataset
    path = root / "tiny" / "test.images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MetabenchError, match="corrupt"):
        store.load("tiny", root, verify=True)


def test_failed_save_keeps_the_previous_dataset(tiny_dataset, monkeypatch):
    dataset, root = tiny_dataset

    def broken_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(MetabenchError, match="free disk space"):
        store.save(dataset, root)
    monkeypatch.undo()
    assert store.load("tiny", root, verify=True).checksum == dataset.checksum
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == ["tiny"]  # no staging left


def test_sampler_is_a_function_of_its_seed():
    split = tiny_split(12, 20)
    spec = EpisodeSpec(5, 2, 3)
    a = sample_indices(split, spec, 10, np.random.default_rng(7))
    b = sample_indices(split, spec, 10, np.random.default_rng(7))
    c = sample_indices(split, spec, 10, np.random.default_rng(8))
    np.testing.assert_array_equal(a.support, b.support)
    np.testing.assert_array_equal(a.query, b.query)
    assert not np.array_equal(a.support, c.support)


def test_episode_classes_are_distinct_and_support_query_disjoint():
    split = tiny_split(12, 20)
    episodes = sample_indices(split, EpisodeSpec(5, 5, 15), 50, np.random.default_rng(0))
    labels = split.labels()
    for e in range(50):
        assert len(set(episodes.classes[e])) == 5
        for way in range(5):
            members = np.concatenate([episodes.support[e, way], episodes.query[e, way]])
            assert len(set(members)) == 20
            assert set(labels[members]) == {episodes.classes[e, way]}


def test_image_bank_builds_labelled_float_batches():
    split = tiny_split(12, 20)
    episodes = sample_indices(split, EpisodeSpec(3, 2, 4), 2, np.random.default_rng(0))
    batch = ImageBank(split).episodes(episodes)
    assert batch.support_x.shape == (2, 6, 1, 28, 28) and batch.query_x.shape == (2, 12, 1, 28, 28)
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2]
    expected = split.images[episodes.support[1, 2, 1], :, :, 0] / 255.0
    np.testing.assert_allclose(batch.support_x[1, 5, 0].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "spec, message",
    [
        (EpisodeSpec(13, 1, 1), "lower ways"),
        (EpisodeSpec(5, 10, 11), "lower shots or queries"),
        (EpisodeSpec(5, 0, 1), "at least 1"),
    ],
)
def test_impossible_episodes_are_clear_errors(spec, message):
    with pytest.raises(MetabenchError, match=message):
        sample_indices(tiny_split(12, 20), spec, 1, np.random.default_rng(0))


def test_fixed_episodes_are_generated_once_and_reused(tmp_path):
    split = tiny_split(12, 20)
    spec = EpisodeSpec(5, 1, 15)
    first = fixed_episodes(split, spec, 30, 0, tmp_path, "tiny-test")
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    second = fixed_episodes(split, spec, 30, 0, tmp_path, "tiny-test")
    np.testing.assert_array_equal(first.support, second.support)
    assert list(tmp_path.iterdir()) == files
    other_seed = fixed_episodes(split, spec, 30, 1, tmp_path, "tiny-test")
    assert not np.array_equal(first.support, other_seed.support)


@pytest.mark.fault
def test_a_re_fetch_during_verification_cannot_pair_one_versions_images_with_the_others_checksum(
    tiny_dataset, monkeypatch
):
    """Read, hash, use: the files verified are the open files used, whatever a concurrent swap does."""
    old, root = tiny_dataset
    new_splits = {
        name: tiny_split(len(s.class_names), 20, seed=10 + i) for i, (name, s) in enumerate(old.splits.items())
    }
    new = store.Dataset("tiny", new_splits, {"source": "test"})
    real, swapped = store._sha256, []

    def hash_then_swap(handle):
        if not swapped:  # another process re-fetches the dataset while this one verifies
            swapped.append(store.save(new, root))
        return real(handle)

    monkeypatch.setattr(store, "_sha256", hash_then_swap)
    loaded = store.load("tiny", root, verify=True)
    assert swapped and loaded.checksum == old.checksum != new.checksum
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(loaded.split(name).images, old.split(name).images)
    monkeypatch.undo()
    assert store.load("tiny", root, verify=True).checksum == new.checksum  # the next load sees the new copy


@pytest.mark.fault
def test_a_second_fetch_of_the_same_dataset_fails_in_one_line_and_leaves_the_first_alone(tmp_path):
    from metabench.data import fetch

    with store.fetching(tmp_path, "glyphs"):  # a first fetch is under way
        with pytest.raises(MetabenchError, match="being fetched") as refused:
            fetch("glyphs", {"max_classes_per_alphabet": 2}, tmp_path)
    assert "\n" not in str(refused.value) and not store.exists("glyphs", tmp_path)
