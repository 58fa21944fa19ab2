"""The embedded glyphs dataset: size, determinism, difficulty."""

import warnings

import numpy as np
import pytest
import torch

from metabench.algorithms import TaskShape, build_algorithm
from metabench.data import glyphs, store
from metabench.episodes import EpisodeSpec, ImageBank, sample_indices
from metabench.evaluation import episode_accuracies


@pytest.fixture(scope="module")
def dataset(glyphs_dir):
    return store.load("glyphs", glyphs_dir, verify=True)


def test_glyphs_is_omniglot_shaped(dataset):
    classes = sum(dataset.split(s).n_classes for s in ("train", "val", "test"))
    alphabets = set().union(*(dataset.split(s).groups for s in ("train", "val", "test")))
    assert classes >= 1000 and len(alphabets) >= 20
    assert dataset.image_shape == (28, 28, 1)
    for name in ("train", "val", "test"):
        assert set(np.unique(dataset.split(name).class_sizes)) == {20}
    # background and evaluation alphabets are disjoint, as in Omniglot
    assert not set(dataset.split("test").groups) & (
        set(dataset.split("train").groups) | set(dataset.split("val").groups)
    )


def test_generation_matches_the_recorded_reference_bit_for_bit(dataset):
    import json

    reference = json.loads(glyphs.REFERENCE_FILE.read_text())
    if reference["fonts"] != dataset.info["fonts"]:
        pytest.skip("this matplotlib ships other font files than the reference was made with")
    assert dataset.checksum == reference["checksum"]


def test_a_class_renders_identically_in_a_worker_process_and_in_process():
    from concurrent.futures import ProcessPoolExecutor

    config = glyphs.GlyphsConfig()
    faces = tuple(str(p) for p in glyphs.font_files() if p.name.startswith("DejaVuSans"))
    job = (ord("K"), faces, config)
    with ProcessPoolExecutor(1) as pool:
        remote = pool.submit(glyphs._render_class, job).result()
    np.testing.assert_array_equal(remote, glyphs._render_class(job))
    other_seed = glyphs._render_class((ord("K"), faces, glyphs.GlyphsConfig(seed=1)))
    assert not np.array_equal(remote, other_seed)


LOOK_ALIKES = [
    ("U+0041", "U+0391", "U+0410"),  # Latin A, Greek Alpha, Cyrillic A
    ("U+0042", "U+0392", "U+0412"),  # B, Beta, Ve
    ("U+004F", "U+039F", "U+041E"),  # O, Omicron, Cyrillic O
    ("U+0050", "U+03A1", "U+0420"),  # P, Rho, Er
    ("U+0048", "U+0397", "U+041D"),  # H, Eta, En
]


def test_look_alike_characters_across_scripts_appear_at_most_once(dataset):
    present = {name.split()[0] for s in ("train", "val", "test") for name in dataset.split(s).class_names}
    for group in LOOK_ALIKES:
        assert len(present & set(group)) <= 1, group


def test_pixel_nearest_neighbour_lands_in_the_target_band(dataset):
    """Hard enough to separate methods: 5-way 1-shot pixel NN between 65% and 85%."""
    test = dataset.split("test")
    episodes = sample_indices(test, EpisodeSpec(5, 1, 15), 600, np.random.default_rng(0))
    pixelnn = build_algorithm("pixelnn", {}, TaskShape(1, 28, 5, 5), torch.device("cpu"))
    accuracy = episode_accuracies(pixelnn, ImageBank(test), episodes).mean()
    assert 0.65 <= accuracy <= 0.85, accuracy


def test_reference_mismatch_warns(dataset, monkeypatch, tmp_path):
    import json

    fake = tmp_path / "reference.json"
    settings = {k: v for k, v in glyphs.asdict(glyphs.GlyphsConfig()).items() if k != "workers"}
    fake.write_text(json.dumps({"generator": settings, "fonts": dataset.info["fonts"], "checksum": "0" * 64}))
    monkeypatch.setattr(glyphs, "REFERENCE_FILE", fake)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        glyphs.check_reference(dataset, glyphs.GlyphsConfig())
    assert any("fonts match" in str(w.message) for w in caught)
